"""Structural re-parameterization in pure PyTorch (no OpenMMLab imports).

``transforms`` (pure tensor functions) < ``branches`` < ``block`` (ODBB);
``presets`` names branch sets; ``arch`` reads and writes searched
architectures; ``convert`` puts ODBBs into any CNN; ``surgery`` grows or
absorbs branches exactly; ``refocus`` re-parameterizes trained convs'
weights (RefConv); ``reparameterize_model`` fuses any model.
"""
from .block import ODBB, named_odbbs
from .branches import BRANCH_NAMES, build_branch, legal_branches
from .convert import convert_to_odbb
from .presets import PRESETS, random_architecture, resolve_branches
from .refocus import RefConv, convert_to_refconv
from .reparameterize import FusionError, reparameterize_model
from .surgery import absorb, grow

__all__ = [
    'ODBB', 'BRANCH_NAMES', 'FusionError', 'PRESETS', 'RefConv', 'absorb',
    'build_branch', 'convert_to_odbb', 'convert_to_refconv', 'grow',
    'legal_branches', 'named_odbbs', 'random_architecture', 'resolve_branches',
    'reparameterize_model'
]
