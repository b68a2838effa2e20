"""OpenMMLab modules of repnas_mm (layer 3): registered on import."""
from .backbones import ODBBNet

__all__ = ['ODBBNet']
