"""Structural re-parameterization in pure PyTorch (no OpenMMLab imports).

``transforms`` (pure tensor functions) < ``branches`` < ``block`` (ODBB);
``presets`` names branch sets; ``reparameterize_model`` fuses any model.
"""
from .block import ODBB
from .branches import BRANCH_NAMES, build_branch, legal_branches
from .presets import PRESETS, random_architecture, resolve_branches
from .reparameterize import reparameterize_model

__all__ = [
    'ODBB', 'BRANCH_NAMES', 'PRESETS', 'build_branch', 'legal_branches',
    'random_architecture', 'resolve_branches', 'reparameterize_model'
]
