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
import copy
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from .block import MAIN, ODBB
from .forms import odbb_class, resolve_form
from .outputs import (eval_outputs, probe_input, relative_error, tolerance,
                      trained_like_norms)
from .pairs import find_conv_bn_pairs, trace_conv_bn_pairs
from .reparameterize import fuse_in_place
from .stock import NormTail, restore_conv_bn


# -- conversion -----------------------------------------------------------
def _conv_refusal(conv: nn.Conv2d) -> Optional[str]:
    """Why ``conv`` is no plain KxK conv with ``K // 2`` zero padding (its
    own forward, e.g. not timm's Conv2dSame or a weight-standardized conv),
    or None. A bias is allowed: the BN that follows absorbs it
    (:meth:`~.block.ODBB.load_stock`)."""
    k, kind = conv.kernel_size, type(conv)
    if kind.forward is not nn.Conv2d.forward or \
            kind._conv_forward is not nn.Conv2d._conv_forward:
        return f'{kind.__name__} has a forward of its own'
    if k[0] != k[1] or k[0] % 2 == 0:
        return f'kernel {k[0]}x{k[1]}, not odd and square'
    if conv.padding != (k[0] // 2, k[0] // 2):
        return f'padding {conv.padding}, not K // 2 = {k[0] // 2}'
    if conv.padding_mode != 'zeros':
        return f'padding mode {conv.padding_mode!r}, not zeros'
    if conv.dilation != (1, 1):
        return f'dilation {conv.dilation}'
    if conv.stride[0] != conv.stride[1]:
        return f'stride {conv.stride}'
    return None


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


@dataclass
class _Swap:
    """One Conv+BN pair and the block that takes its place; reversible."""
    model: nn.Module
    conv_name: str
    conv: nn.Conv2d
    bn_name: str
    bn: nn.Module
    block: ODBB
    tail: nn.Module  # what stays in the BN's place: Identity or NormTail

    def apply(self):
        self.model.set_submodule(self.conv_name, self.block)
        self.model.set_submodule(self.bn_name, self.tail)

    def undo(self):
        self.model.set_submodule(self.conv_name, self.conv)
        self.model.set_submodule(self.bn_name, self.bn)


class _ExactCheck:
    """Does a model, converted and then fused, compute what it did?

    Made before the conversion: it records the model's outputs on ``x``,
    and whether the model's own fusion (``reparameterize_model``: its own
    re-parameterizable blocks) runs and is exact. Each call copies the
    model, runs the copy, fuses it (as ``reparameterize_model`` does; only
    its ODBBs if the model's own fusion was not exact to begin with) and
    runs it again. In float64 on the CPU (the model's own dtype and device
    if it cannot run so), where rounding over any depth stays near 1e-13,
    far below :attr:`RTOL`; what the bound admits is a float32 model's
    exact identities (a quantization-friendly block's ``kxk`` BN) read in
    float64, about 1e-8 per block. A wrong pairing under trained-like BN
    statistics errs by tenths; a conversion that breaks the model's own
    fusion (which reads its convs) raises or errs too.
    """
    RTOL = 1e-5

    def __init__(self, model: nn.Module, x: torch.Tensor):
        self.cast = dict(device='cpu', dtype=torch.float64)
        try:
            self.x = x.detach().to(**self.cast)
            self.before = eval_outputs(self._copy(model), self.x)
        except Exception:  # an op without a float64 CPU kernel
            self.cast = None
            self.x = x
            self.before = eval_outputs(self._copy(model), self.x)
        self.rtol = max(self.RTOL, tolerance(self.x.dtype))
        try:
            self.own_fusion = self._close(
                fuse_in_place(self._copy(model)))
        except Exception:
            self.own_fusion = False

    def _copy(self, model: nn.Module) -> nn.Module:
        trial = copy.deepcopy(model)
        return trial if self.cast is None else trial.to(**self.cast)

    def _close(self, model: nn.Module) -> bool:
        return relative_error(eval_outputs(model, self.x),
                              self.before) <= self.rtol

    def __call__(self, model: nn.Module) -> bool:
        try:
            trial = self._copy(model)
            if not self._close(trial):
                return False
            if self.own_fusion:
                fuse_in_place(trial)
            else:
                for block in [m for m in trial.modules()
                              if isinstance(m, ODBB)]:
                    block.switch_to_deploy()
                restore_conv_bn(trial)
            return self._close(trial)
        except Exception:  # e.g. the model's own fusion reads a conv
            return False


def convert_to_odbb(model: nn.Module,
                    example: Optional[torch.Tensor] = None,
                    branches='dbb',
                    weight_sharing: bool = False,
                    online: bool = False,
                    quant_friendly: bool = False,
                    *,
                    form: str = 'standard') -> List[str]:
    """Replace the model's KxK Conv+BN pairs by ODBBs, in place.

    Each ODBB has the ``branches`` (a preset or list, filtered to what is
    legal) but only ``kxk`` active: its conv and BN are the old ones, so the
    model computes exactly what it did. A pair is a conv whose output one
    BN alone reads (:func:`~.pairs.trace_conv_bn_pairs`), wherever the two
    live in the module tree. A conv bias folds into the BN.

    Checked, with every BN's statistics and affine parameters set as a
    trained model's might be (:func:`~.outputs.trained_like_norms`; a fresh
    BN is almost an identity and would hide a misplaced one), then put
    back: the converted model, and the model fused again, compute what the
    model did on a random input shaped like ``example`` (in float64 on the
    CPU, relative error <= 1e-5). A pair that fails either is left alone.

    Left alone, with one warning per reason naming them: convs with
    dilation, padding other than ``K // 2`` or a forward of their own; convs
    whose norm is not a linear BatchNorm (or one with an activation that
    splits off, see :func:`_split_norm`); convs whose output something else
    reads too, or which run more than once; pairs that fail the check; and
    convs inside a block that re-parameterizes itself (a module with one of
    :data:`REPARAMETERIZE_VERBS`: timm's RepVGG and MobileOne blocks,
    mmpretrain's RepVGG and RepLKNet). Returns the converted conv names;
    on an error the model is left as it was.

    Args:
        example: an input batch to find the pairs with (default: a 1x3x64x64
            tensor, or the first conv's channel count).
        weight_sharing: RepNAS Eq. 5 sharing. DyRep needs it off: growth
            and absorption adjust the main kernel, which shared branches
            would see too.
        form: the ODBB form (:mod:`.forms`). Online (OREPA) and
            quantization-friendly (QARepVGG) blocks take the BN as their one
            BN after the sum, the conv as the ``kxk`` kernel at an output
            scale of exactly 1.
        online, quant_friendly: deprecated aliases of ``form``.
    """
    form = resolve_form(form, online, quant_friendly, 'convert_to_odbb')
    if example is None:
        example = torch.zeros_like(probe_input(model))
    probe = probe_input(model, example)
    reference = eval_outputs(model, probe)
    swaps, left_alone = _plan_swaps(model, example, odbb_class(form),
                                    dict(branches=branches,
                                         weight_sharing=weight_sharing))
    try:
        swaps, inexact = _apply_exact(model, probe, swaps)
        if relative_error(eval_outputs(model, probe),
                          reference) > tolerance(probe.dtype):
            raise ValueError('convert_to_odbb changed the model\'s outputs')
    except BaseException:  # nothing half-converted
        for swap in reversed(swaps):
            swap.undo()
        raise
    left_alone['converting them changed the outputs, or fusing them did'] = \
        inexact
    for why, names in left_alone.items():
        _warn(why, names)
    return [s.conv_name for s in swaps]


def _plan_swaps(model: nn.Module, example: torch.Tensor, block_class,
                block_args: dict):
    """(one :class:`_Swap` per convertible pair, {why: conv names} of the
    KxK convs left alone)."""
    pairs, refused = trace_conv_bn_pairs(model, example)
    reparameterizable = _self_reparameterizing(model)
    left_alone: Dict[str, List[str]] = {}
    if refused:
        left_alone['no single BatchNorm reads their output alone'] = [
            f'{conv} ({why})' for conv, why in refused.items()]
    swaps, inside = [], []
    for conv_name, bn_name in pairs:
        conv = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        if conv.kernel_size == (1, 1):
            continue
        if any(conv_name.startswith(p + '.') for p in reparameterizable):
            inside.append(conv_name)  # its block's own fusion reads it
            continue
        why = _conv_refusal(conv)
        split = None if why else _split_norm(bn)
        if split is None:
            why = why or f'{type(bn).__name__} is no linear BatchNorm'
            left_alone.setdefault(why, []).append(conv_name)
            continue
        norm_layer, tail = split
        block = block_class(
            conv.in_channels, conv.out_channels, conv.kernel_size[0],
            conv.stride[0], conv.groups, norm_layer=norm_layer,
            **block_args).to(conv.weight)  # device, dtype
        if MAIN not in block.branch_names:
            raise ValueError(f'branches {block_args["branches"]!r} lack the '
                             f'{MAIN!r} branch that holds the converted '
                             'conv')
        block.active = [MAIN]
        # What restore_conv_bn needs to put the stock pair back.
        bn_parent, _, bn_attr = bn_name.rpartition('.')
        block.stock_pair = dict(bn_parent=model.get_submodule(bn_parent),
                                bn_name=bn_attr, norm=bn,
                                conv_bias=conv.bias is not None)
        swaps.append(_Swap(model, conv_name, conv, bn_name, bn, block,
                           nn.Identity() if tail is None else tail))
    left_alone['inside blocks that re-parameterize themselves'] = inside
    return swaps, left_alone


def _apply_exact(model: nn.Module, probe: torch.Tensor,
                 swaps: List[_Swap]):
    """Apply the swaps that keep the model (and its fusion) exact under
    trained-like BN statistics: (applied swaps, conv names of the others).
    The blocks end with the stock BNs' own statistics."""
    inexact = []
    with trained_like_norms(model, probe):
        exact = _ExactCheck(model, probe)
        for swap in swaps:
            swap.block.load_stock(swap.conv, swap.bn)
            swap.apply()
        if swaps and not exact(model):
            # Find the culprits: one pair at a time, kept if exact.
            for swap in reversed(swaps):
                swap.undo()
            for swap in swaps:
                swap.apply()
                if not exact(model):
                    swap.undo()
                    inexact.append(swap.conv_name)
            swaps = [s for s in swaps if s.conv_name not in inexact]
    for swap in swaps:  # the BNs hold their own statistics again
        swap.block.load_stock(swap.conv, swap.bn)
    return swaps, inexact


def _warn(reason: str, names: List[str]):
    if names:
        warnings.warn(f'convert_to_odbb left {len(names)} KxK conv(s) as '
                      f'they are ({reason}): {_some(names)}')


def _some(names: List[str], shown: int = 4) -> str:
    return ', '.join(names[:shown]) + (', ...' if len(names) > shown else '')


#: Methods by which a module fuses itself (timm, mmpretrain: RepVGG,
#: MobileOne, RepLKNet's ``merge_kernel``, RepMLP's ``local_inject``).
REPARAMETERIZE_VERBS = ('fuse', 'reparameterize', 'switch_to_deploy',
                        'merge_kernel', 'local_inject')


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


__all__ = [
    'NormTail', 'convert_to_odbb', 'find_conv_bn_pairs', 'restore_conv_bn'
]
