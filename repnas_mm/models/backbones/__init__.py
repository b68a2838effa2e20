from .odbbnet import ODBBNet, ODBBLayer

__all__ = ['ODBBNet', 'ODBBLayer']
