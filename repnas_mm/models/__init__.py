"""OpenMMLab modules of repnas_mm (layer 3): registered on import."""
from .backbones import ODBBNet
from .converted import build_converted
from .refocus import build_refconv_converted

__all__ = ['ODBBNet', 'build_converted', 'build_refconv_converted']
