"""The search: policies over the ODBBs of a model (layer 3).

``space`` holds the policy and needs torch only; ``optim``, ``hooks`` and
``figure`` connect it to mmengine's Runner (imported when the OpenMMLab stack
is there, which registers ``RepNASHook`` and the optimizer constructor).
"""
from .space import SearchSpace, find_blocks, resolve_budget

__all__ = ['SearchSpace', 'find_blocks', 'resolve_budget']
