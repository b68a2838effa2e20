"""Structural re-parameterization in pure PyTorch (no OpenMMLab imports).

``transforms`` (pure tensor functions) < ``branches`` < ``block`` (ODBB);
``presets`` names branch sets; ``convert`` puts ODBBs into any CNN and grows
or absorbs branches exactly; ``reparameterize_model`` fuses any model.
"""
from .block import ODBB
from .branches import BRANCH_NAMES, build_branch, legal_branches
from .convert import absorb, convert_to_odbb, grow
from .presets import PRESETS, random_architecture, resolve_branches
from .reparameterize import reparameterize_model

__all__ = [
    'ODBB', 'BRANCH_NAMES', 'PRESETS', 'absorb', 'build_branch',
    'convert_to_odbb', 'grow', 'legal_branches', 'random_architecture',
    'resolve_branches', 'reparameterize_model'
]
