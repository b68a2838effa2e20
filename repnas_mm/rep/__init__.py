"""Structural re-parameterization in pure PyTorch (no OpenMMLab imports).

``transforms`` (pure tensor functions) < ``branches`` < ``block`` (ODBB,
and its quantization-friendly form) < ``online`` (the online form) <
``forms`` (the forms by name);
``presets`` names branch sets; ``arch`` reads and writes searched
architectures; ``convert`` puts ODBBs into any CNN; ``surgery`` grows or
absorbs branches exactly; ``refocus`` re-parameterizes trained convs'
weights (RefConv); ``reparameterize_model`` fuses any model.
"""
from .block import ODBB, QuantFriendlyODBB, named_odbbs
from .branches import BRANCH_NAMES, build_branch, legal_branches
from .convert import convert_to_odbb
from .forms import FORMS, build_odbb, odbb_class
from .online import OnlineODBB
from .presets import PRESETS, random_architecture, resolve_branches
from .refocus import RefConv, convert_to_refconv
from .reparameterize import FusionError, reparameterize_model
from .surgery import absorb, grow

__all__ = [
    'ODBB', 'BRANCH_NAMES', 'FORMS', 'FusionError', 'OnlineODBB', 'PRESETS',
    'QuantFriendlyODBB', 'RefConv', 'absorb', 'build_branch', 'build_odbb',
    'convert_to_odbb', 'convert_to_refconv', 'grow', 'odbb_class',
    'legal_branches', 'named_odbbs', 'random_architecture', 'resolve_branches',
    'reparameterize_model'
]
