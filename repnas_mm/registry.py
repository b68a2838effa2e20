"""Registration of repnas_mm modules in the OpenMMLab registries.

A backbone is usable from mmpretrain configs (``default_scope='mmpretrain'``)
and mmdet configs (``default_scope='mmdet'``) alike, so it goes into both
``MODELS`` registries; hooks go into mmengine's root ``HOOKS``, which both
scopes fall back to.
"""
from mmdet.registry import MODELS as MMDET_MODELS
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS

MODEL_REGISTRIES = (MMPRETRAIN_MODELS, MMDET_MODELS)


def register_model(cls):
    """Class decorator: register ``cls`` in mmpretrain's and mmdet's MODELS."""
    for registry in MODEL_REGISTRIES:
        registry.register_module(module=cls)
    return cls
