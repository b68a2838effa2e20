"""ODBBs inside any CNN: conversion of Conv+BN pairs, and the way back.

- :func:`convert_to_odbb` replaces every KxK ``Conv2d`` + ``BatchNorm`` pair
  of a model by an ODBB whose ``kxk`` branch *is* that conv and BN (the other
  branches exist but are inactive), so the model computes exactly what it
  did. The BN's place holds an ``nn.Identity`` (or, for a norm with an
  activation inside such as timm's ``BatchNormAct2d``, that activation).
  :func:`restore_conv_bn` (run by ``reparameterize_model`` after fusing)
  puts the ``Conv2d`` + norm pair back, so the fused model has the stock
  module layout and state dict.

Growing branches in the converted blocks is :mod:`.surgery`'s job. Pure
PyTorch.
"""
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from .block import MAIN, ODBB
from .outputs import eval_outputs, outputs_match, probe_input, run_eval


# -- conversion -----------------------------------------------------------
def find_conv_bn_pairs(model: nn.Module,
                       example: torch.Tensor) -> List[Tuple[str, str]]:
    """(conv name, BN name) for every BN that directly normalizes a conv.

    Found by running ``example`` through ``model`` and matching each BN's
    input tensor to the conv that produced it; no naming convention needed.
    A conv whose output several BNs read is left out (no single pair).
    """
    # The produced tensors stay referenced until the end of the trace: an
    # id() is unique only among live objects.
    produced: Dict[int, Tuple[str, torch.Tensor]] = {}
    readers: Dict[str, List[str]] = {}
    handles = []

    def record_bn(bn_name, inputs):
        hit = produced.get(id(inputs[0]))
        if hit is not None and hit[1] is inputs[0]:
            readers.setdefault(hit[0], [])
            if bn_name not in readers[hit[0]]:
                readers[hit[0]].append(bn_name)

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: produced.__setitem__(
                    id(o), (name, o))))
        elif isinstance(module, _BatchNorm):
            handles.append(module.register_forward_pre_hook(
                lambda m, i, name=name: record_bn(name, i)))
    try:
        run_eval(model, example)
    finally:
        for handle in handles:
            handle.remove()
    return [(conv, bns[0]) for conv, bns in readers.items() if len(bns) == 1]


def _convertible(conv: nn.Conv2d) -> bool:
    """A plain KxK conv (its own forward, e.g. not timm's Conv2dSame or a
    weight-standardized conv) with ``K // 2`` zero padding and no bias."""
    k = conv.kernel_size
    return (type(conv).forward is nn.Conv2d.forward
            and type(conv)._conv_forward is nn.Conv2d._conv_forward
            and k[0] == k[1] and k[0] > 1 and k[0] % 2 == 1
            and conv.padding == (k[0] // 2, k[0] // 2)
            and conv.dilation == (1, 1) and conv.bias is None
            and conv.stride[0] == conv.stride[1]
            and conv.padding_mode == 'zeros')


class NormTail(nn.Module):
    """What a norm-with-activation module applies after normalizing.

    timm's ``BatchNormAct2d`` is a BatchNorm subclass whose forward is BN,
    then ``drop``, then ``act``. In a block every branch must end in a
    *linear* BN, so the conversion gives the branches plain BNs and leaves
    ``drop`` and ``act`` here, in the old norm's place, after the block.
    """

    def __init__(self, drop: nn.Module, act: nn.Module):
        super().__init__()
        self.drop = drop
        self.act = act

    def forward(self, x):
        return self.act(self.drop(x))


_LINEAR_FORWARDS = (_BatchNorm.forward, nn.SyncBatchNorm.forward)


def _split_norm(bn: nn.Module):
    """``(branch norm factory, tail)`` for a norm, or None to leave it alone.

    A BatchNorm whose forward is the stock one is linear: the branches get
    norms of its type and nothing follows the block. A BatchNorm subclass
    with an activation inside (``drop`` and ``act`` modules, as timm's
    ``BatchNormAct2d``) is split into a plain BN and a :class:`NormTail`;
    the split is checked numerically in eval mode. Anything else (another
    forward, no affine parameters or running statistics) is None: its conv
    is not converted, since the block's branches would not be linear.
    """
    if not isinstance(bn, _BatchNorm) or not (bn.affine
                                              and bn.track_running_stats):
        return None
    tail = None
    norm_type = type(bn)
    if type(bn).forward not in _LINEAR_FORWARDS:
        drop, act = getattr(bn, 'drop', None), getattr(bn, 'act', None)
        if not (isinstance(drop, nn.Module) and isinstance(act, nn.Module)):
            return None
        tail = NormTail(drop, act)
        norm_type = nn.SyncBatchNorm if isinstance(
            bn, nn.SyncBatchNorm) else nn.BatchNorm2d
    if not _is_norm_then(bn, tail):
        return None

    def factory(channels, bn=bn, norm_type=norm_type):
        return norm_type(channels, bn.eps, bn.momentum, bn.affine,
                         bn.track_running_stats)

    return factory, tail


def _is_norm_then(bn: nn.Module, tail: Optional[nn.Module]) -> bool:
    """Is eval-mode ``bn(x)`` the batch norm of ``x`` followed by ``tail``?"""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, bn.num_features, 3, 3, generator=gen).to(bn.weight)
    x = x * 3 - 1
    was_training = bn.training
    try:
        bn.eval()
        with torch.no_grad():
            expected = bn(x.clone())
            got = F.batch_norm(x, bn.running_mean, bn.running_var,
                               bn.weight, bn.bias, False, 0.0, bn.eps)
            if tail is not None:
                tail.eval()
                got = tail(got)
    finally:
        bn.train(was_training)
        if tail is not None:
            tail.train(was_training)
    return torch.allclose(expected, got, rtol=1e-5, atol=1e-6)


def split_name(name: str):
    parent, _, attr = name.rpartition('.')
    return parent, attr


def convert_to_odbb(model: nn.Module,
                    example: Optional[torch.Tensor] = None,
                    branches='dbb',
                    weight_sharing: bool = False,
                    online: bool = False,
                    quant_friendly: bool = False) -> List[str]:
    """Replace the model's KxK Conv+BN pairs by ODBBs, in place.

    Each ODBB has the ``branches`` (a preset or list, filtered to what is
    legal) but only ``kxk`` active: its conv and BN are the old ones, so the
    model's outputs are unchanged (checked on a random input; ``ValueError``
    otherwise). Left alone, with one warning naming them: convs with a
    bias, dilation, padding other than ``K // 2`` or a forward of their own,
    and convs whose norm is not a linear BatchNorm (or one with an
    activation that splits off, see :func:`_split_norm`), and convs
    inside a block that re-parameterizes itself (a module with ``fuse``,
    ``reparameterize`` or ``switch_to_deploy``: timm's RepVGG and MobileOne
    blocks, mmpretrain's RepVGG). Returns the converted conv names.

    Args:
        example: an input batch to find the pairs with (default: a 1x3x64x64
            tensor, or the first conv's channel count).
        weight_sharing: RepNAS Eq. 5 sharing. DyRep needs it off: growth
            and absorption adjust the main kernel, which shared branches
            would see too.
        online: build online ODBBs (OREPA form): the BN becomes the block's
            one BN, the conv the ``kxk`` kernel at scale 1.
        quant_friendly: build quantization-friendly ODBBs (QARepVGG form):
            the BN becomes the block's one BN after the sum, the ``kxk``
            branch's own BN starts as the exact identity.
    """
    if example is None:
        example = torch.zeros_like(probe_input(model))
    probe = probe_input(model, example)
    before = eval_outputs(model, probe)
    reparameterizable = _self_reparameterizing(model)
    converted, skipped, inside = [], [], []
    for conv_name, bn_name in find_conv_bn_pairs(model, example):
        conv = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        if conv.kernel_size[0] == 1:
            continue
        if any(conv_name.startswith(p + '.') for p in reparameterizable):
            inside.append(conv_name)  # its block's own fusion reads it
            continue
        split = _split_norm(bn) if _convertible(conv) else None
        if split is None:
            skipped.append(f'{conv_name} ({type(conv).__name__} + '
                           f'{type(bn).__name__})')
            continue
        norm_layer, tail = split
        block = ODBB(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size[0],
            conv.stride[0],
            conv.groups,
            branches=branches,
            weight_sharing=weight_sharing,
            norm_layer=norm_layer,
            online=online,
            quant_friendly=quant_friendly).to(conv.weight)  # device, dtype
        if MAIN not in block.branch_names:
            raise ValueError(f'branches {branches!r} lack the {MAIN!r} '
                             'branch that holds the converted conv')
        main = block.branches[MAIN]
        with torch.no_grad():
            (block.weight if weight_sharing else main.weight).copy_(
                conv.weight)
        stats = bn.state_dict()  # a norm-act also holds its act's tensors
        norm = main.bn if block.bn is None else block.bn
        norm.load_state_dict({k: stats[k] for k in norm.state_dict()})
        with torch.no_grad():
            if online:
                main.scale.fill_(1.0)
            elif quant_friendly:  # sigma = 1 exactly: an identity in eval
                main.bn.running_var.fill_(1.0 - main.bn.eps)
        block.active = [MAIN]
        # What restore_conv_bn needs to put the stock pair back.
        bn_parent, bn_attr = split_name(bn_name)
        block.stock_pair = dict(bn_name=bn_attr, norm=bn)
        parent, attr = split_name(conv_name)
        setattr(model.get_submodule(parent), attr, block)
        setattr(model.get_submodule(bn_parent), bn_attr,
                nn.Identity() if tail is None else tail)
        converted.append(conv_name)
    if skipped:
        warnings.warn(f'convert_to_odbb left {len(skipped)} KxK conv(s) as '
                      f'they are (no plain conv + linear BatchNorm pair): '
                      f'{_some(skipped)}')
    if inside:
        warnings.warn(f'convert_to_odbb left {len(inside)} KxK conv(s) as '
                      'they are, inside blocks that re-parameterize '
                      f'themselves: {_some(inside)}')
    if not outputs_match(eval_outputs(model, probe), before, rtol=1e-4,
                         atol=1e-5):
        raise ValueError('convert_to_odbb changed the model\'s outputs: a '
                         'converted conv output is read by something else '
                         'than its BatchNorm')
    return converted


def _some(names: List[str], shown: int = 4) -> str:
    return ', '.join(names[:shown]) + (', ...' if len(names) > shown else '')


REPARAMETERIZE_VERBS = ('fuse', 'reparameterize', 'switch_to_deploy')


def _self_reparameterizing(model: nn.Module) -> List[str]:
    """Names of the submodules that re-parameterize themselves already.

    timm's RepVGG and MobileOne blocks, mmpretrain's RepVGG: their own
    fusion reads their convs' attributes, so their convs stay as they are.
    The model itself does not count (a model-level ``fuse`` is common).
    """
    return [
        name for name, m in model.named_modules() if name
        and not isinstance(m, ODBB) and any(
            callable(getattr(m, verb, None))
            for verb in REPARAMETERIZE_VERBS)
    ]


def restore_conv_bn(model: nn.Module) -> int:
    """Turn fused converted ODBBs back into a ``Conv2d`` + BN pair.

    The conv holds the fused kernel; the model's own norm module comes back
    (mean 0, var 1, weight ``sqrt(1 + eps)``) and adds the fused bias, with
    its activation again inside when it had one. Returns how many were
    restored.
    """
    restored = 0
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            pair = getattr(child, 'stock_pair', None)
            if not isinstance(child, ODBB) or pair is None or \
                    child.fused_conv is None:
                continue
            fused = child.fused_conv
            conv = nn.Conv2d(child.in_channels, child.out_channels,
                             child.kernel_size, child.stride,
                             child.kernel_size // 2, groups=child.groups,
                             bias=False).to(fused.weight)
            bn = pair['norm'].to(fused.weight)
            tail = getattr(parent, pair['bn_name'])
            if isinstance(tail, NormTail):
                bn.drop, bn.act = tail.drop, tail.act
            with torch.no_grad():
                conv.weight.copy_(fused.weight)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0)
                bn.weight.fill_((1.0 + bn.eps)**0.5)
                bn.bias.copy_(fused.bias)
            bn.train(child.training)
            setattr(parent, attr, conv)
            setattr(parent, pair['bn_name'], bn)
            restored += 1
    return restored


__all__ = [
    'NormTail', 'convert_to_odbb', 'find_conv_bn_pairs', 'restore_conv_bn'
]
