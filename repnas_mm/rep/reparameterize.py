"""Fuse any module tree: one verb for blocks, backbones, classifiers, detectors."""
import copy

import torch.nn as nn

from .convert import restore_conv_bn
from .refocus import restore_refconvs


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Call ``switch_to_deploy()`` on every module of ``model`` that has it.

    Works for ODBBs and for any other re-parameterizable module with that
    verb (mmpretrain's RepVGG blocks, for example). ODBBs that
    ``convert_to_odbb`` put in place of a Conv+BN pair become a plain
    ``Conv2d`` + BN pair again (the stock layout), and RefConvs
    (``convert_to_refconv``) plain ``Conv2d`` of their kernel ``W_t``.
    Returns the fused model; with ``inplace=False`` (default) ``model``
    itself is left untouched.
    Fusing a fused model changes nothing.
    """
    if not inplace:
        model = copy.deepcopy(model)
    # RefConvs first: a fused block reads its conv's weight, which must be
    # the refocused kernel, not a RefConv's frozen base.
    restore_refconvs(model)
    # Collect first: switching replaces children while we walk.
    targets = [m for m in model.modules()
               if callable(getattr(m, 'switch_to_deploy', None))]
    for module in targets:
        module.switch_to_deploy()
    # ODBBs that replaced a model's own Conv+BN become that pair again.
    restore_conv_bn(model)
    return model
