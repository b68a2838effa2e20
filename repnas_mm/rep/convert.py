"""ODBBs inside any CNN, and the block surgery of dynamic re-parameterization.

- :func:`convert_to_odbb` replaces every KxK ``Conv2d`` + ``BatchNorm`` pair
  of a model by an ODBB whose ``kxk`` branch *is* that conv and BN (the other
  branches exist but are inactive), so the model computes exactly what it
  did. The BN's place holds an ``nn.Identity``. :func:`restore_conv_bn` (run
  by ``reparameterize_model`` after fusing) puts a plain ``Conv2d`` + BN pair
  back, so the fused model has the stock module layout and state dict.
- :func:`grow` and :func:`absorb` add a branch to / remove a branch from an
  active block without changing its eval-mode function: the branch's exact
  ``(kernel, bias)`` is taken from / given back to the main ``kxk`` branch
  (DyRep's growth and de-parameterization).

Pure PyTorch: nothing here knows about saliency or schedules.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .block import ODBB

MAIN = 'kxk'


# -- conversion -----------------------------------------------------------
def find_conv_bn_pairs(model: nn.Module,
                       example: torch.Tensor) -> List[Tuple[str, str]]:
    """(conv name, BN name) for every BN that directly normalizes a conv.

    Found by running ``example`` through ``model`` and matching each BN's
    input tensor to the conv that produced it; no naming convention needed.
    """
    produced: Dict[int, str] = {}
    pairs: List[Tuple[str, str]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: produced.__setitem__(id(o), name)))
        elif isinstance(module, _BatchNorm):
            handles.append(module.register_forward_pre_hook(
                lambda m, i, name=name: pairs.append(
                    (produced[id(i[0])], name)) if id(i[0]) in produced
                else None))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    seen, unique = set(), []
    for pair in pairs:
        if pair not in seen:
            seen.add(pair)
            unique.append(pair)
    return unique


def _convertible(conv: nn.Conv2d) -> bool:
    k = conv.kernel_size
    return (k[0] == k[1] and k[0] > 1 and k[0] % 2 == 1
            and conv.padding == (k[0] // 2, k[0] // 2)
            and conv.dilation == (1, 1) and conv.bias is None
            and conv.stride[0] == conv.stride[1]
            and conv.padding_mode == 'zeros')


def _split(name: str):
    parent, _, attr = name.rpartition('.')
    return parent, attr


def convert_to_odbb(model: nn.Module,
                    example: Optional[torch.Tensor] = None,
                    branches='dbb',
                    weight_sharing: bool = False) -> List[str]:
    """Replace the model's KxK Conv+BN pairs by ODBBs, in place.

    Each ODBB has the ``branches`` (a preset or list, filtered to what is
    legal) but only ``kxk`` active: its conv and BN are the old ones, so the
    model's outputs are unchanged. Convs with a bias, dilation, or padding
    other than ``K // 2`` are left alone. Returns the converted conv names.

    Args:
        example: an input batch to find the pairs with (default: a 1x3x64x64
            tensor, or the first conv's channel count).
        weight_sharing: RepNAS Eq. 5 sharing. DyRep needs it off: growth
            and absorption adjust the main kernel, which shared branches
            would see too.
    """
    if example is None:
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        example = torch.zeros(1, first.in_channels, 64, 64)
    converted = []
    for conv_name, bn_name in find_conv_bn_pairs(model, example):
        conv = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        if not _convertible(conv):
            continue
        block = ODBB(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size[0],
            conv.stride[0],
            conv.groups,
            branches=branches,
            weight_sharing=weight_sharing,
            norm_layer=lambda c, bn=bn: type(bn)(
                c, bn.eps, bn.momentum, bn.affine, bn.track_running_stats))
        if MAIN not in block.branch_names:
            raise ValueError(f'branches {branches!r} lack the {MAIN!r} '
                             'branch that holds the converted conv')
        main = block.branches[MAIN]
        with torch.no_grad():
            (block.weight if weight_sharing else main.weight).copy_(
                conv.weight)
        main.bn.load_state_dict(bn.state_dict())
        block.active = [MAIN]
        block.stock_pair = dict(bn_name=_split(bn_name)[1], bn_type=type(bn),
                                eps=bn.eps, momentum=bn.momentum)
        parent = model.get_submodule(_split(conv_name)[0])
        setattr(parent, _split(conv_name)[1], block.to(conv.weight.device))
        setattr(model.get_submodule(_split(bn_name)[0]), _split(bn_name)[1],
                nn.Identity())
        converted.append(conv_name)
    return converted


def restore_conv_bn(model: nn.Module) -> int:
    """Turn fused converted ODBBs back into a ``Conv2d`` + BN pair.

    The conv holds the fused kernel; the BN (mean 0, var 1, weight
    ``sqrt(1 + eps)``) adds the fused bias. Returns how many were restored.
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
            bn = pair['bn_type'](child.out_channels, pair['eps'],
                                 pair['momentum']).to(fused.weight)
            with torch.no_grad():
                conv.weight.copy_(fused.weight)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0)
                bn.weight.fill_((1.0 + pair['eps'])**0.5)
                bn.bias.copy_(fused.bias)
            bn.train(child.training)
            setattr(parent, attr, conv)
            setattr(parent, pair['bn_name'], bn)
            restored += 1
    return restored


# -- growth and de-parameterization ----------------------------------------
def _main_scale(block: ODBB) -> torch.Tensor:
    """Per-channel factor from the main conv's kernel to its fused kernel."""
    bn = block.branches[MAIN].bn
    return bn.weight / torch.sqrt(bn.running_var + bn.eps)


def _shift_main(block: ODBB, kernel: torch.Tensor, bias: torch.Tensor,
                sign: float):
    """Add ``sign * (kernel, bias)`` to the main branch's function."""
    main = block.branches[MAIN]
    scale = _main_scale(block).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        main.weight.add_(sign * kernel / scale)
        main.bn.bias.add_(sign * bias)


def _check(block: ODBB, name: str):
    if block.weight_sharing and block.weight is not None:
        raise ValueError('growth and absorption need weight_sharing=False: '
                         'shared branches would change with the main kernel')
    if name == MAIN or name not in block.branch_names:
        raise ValueError(f'{name!r} is not a branch that can be grown or '
                         f'absorbed in this block ({block.branch_names})')


def grow(block: ODBB, names: Sequence[str], bn_scale: float = 0.01):
    """Activate ``names``, each BN at ``bn_scale``, function unchanged.

    The new branch starts with BN weight ``bn_scale`` and bias 0; its exact
    eval-mode ``(kernel, bias)`` is subtracted from the main branch, so the
    block's eval-mode output does not move.
    """
    new = [n for n in names if n not in block.active]
    for name in new:
        _check(block, name)
        branch = block.branches[name]
        with torch.no_grad():
            branch.bn.weight.fill_(bn_scale)
            branch.bn.bias.zero_()
        kernel, bias = branch.kernel_bias()
        _shift_main(block, kernel.detach(), bias.detach(), -1.0)
    block.active = list(block.active) + new
    return new


def absorb(block: ODBB, names: Sequence[str]):
    """Deactivate ``names``, their function added to the main branch.

    The removed branches' parameters and statistics are re-initialized (a
    later growth starts them afresh). Returns their parameters.
    """
    gone = [n for n in names if n in block.active]
    released = []
    for name in gone:
        _check(block, name)
        branch = block.branches[name]
        kernel, bias = branch.kernel_bias()
        _shift_main(block, kernel.detach(), bias.detach(), +1.0)
        released += list(branch.parameters())
        _reset(branch)
    block.active = [n for n in block.active if n not in gone]
    return released


def _reset(module: nn.Module):
    for m in module.modules():
        if m is not module and hasattr(m, 'reset_parameters'):
            m.reset_parameters()
        if isinstance(m, _BatchNorm):
            m.reset_running_stats()
    for name, param in module.named_parameters(recurse=False):
        if name == 'weight':
            nn.init.kaiming_uniform_(param, a=5**0.5)
        elif name == 'weight_1x1':
            nn.init.dirac_(param, groups=module.groups)


def bn_scale_ratio(block: ODBB, name: str) -> float:
    """mean |BN weight| of a branch over that of the main branch."""
    main = block.branches[MAIN].bn.weight.detach().abs().mean()
    other = block.branches[name].bn.weight.detach().abs().mean()
    return float(other / main.clamp_min(1e-12))


__all__ = [
    'absorb', 'bn_scale_ratio', 'convert_to_odbb', 'find_conv_bn_pairs',
    'grow', 'restore_conv_bn'
]
