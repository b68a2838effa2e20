"""The search: policies over the ODBBs of a model (layer 3).

``space`` (RepNAS) and ``dyrep`` hold the policies; ``repnas_hook``,
``dyrep_hook`` and ``optim`` connect them to mmengine's Runner (imported with
the OpenMMLab stack, which registers the hooks and the optimizer
constructor); ``distributed`` and ``rng`` hold what they need from DDP and
from the global random states; ``figure`` draws a searched architecture.
"""
from .space import SearchSpace, resolve_budget

__all__ = ['SearchSpace', 'resolve_budget']
