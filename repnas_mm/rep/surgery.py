"""Block surgery of dynamic re-parameterization (DyRep), exact both ways.

:func:`grow` and :func:`absorb` add branches to / remove branches from an
active block without changing its eval-mode function: a branch's exact
``(kernel, bias)`` is taken from / given back to the main ``kxk`` branch.
Pure PyTorch: nothing here knows about saliency or schedules (that is
``repnas_mm.search.dyrep``).
"""
from typing import Sequence

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .block import MAIN, ODBB


def _shift_main(block: ODBB, kernel: torch.Tensor, bias: torch.Tensor,
                sign: float):
    """Add ``sign * (kernel, bias)`` to the main branch's function.

    The main branch computes ``(W * x - mean) * gamma / std + beta``. A
    channel with ``gamma == 0`` (a zero-initialised residual BN) cannot take
    a kernel through ``W``; where one must be added there, the channel is
    first switched on with ``gamma = 1``, ``W = 0`` and ``beta`` raised by
    ``mean / std``, which leaves its output as it was.
    """
    main = block.branches[MAIN]
    bn = main.bn
    std = torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        off = (bn.weight == 0) & (kernel.flatten(1).abs().sum(1) > 0)
        if off.any():
            main.weight[off] = 0.0
            bn.weight[off] = 1.0
            bn.bias[off] += bn.running_mean[off] / std[off]
        scale = (bn.weight / std).reshape(-1, 1, 1, 1)
        # Channels still off take no kernel (theirs is zero): no 0 / 0.
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        main.weight.add_(sign * kernel / scale)
        bn.bias.add_(sign * bias)


def _check(block: ODBB, name: str):
    if block.weight_sharing and block.weight is not None:
        raise ValueError('growth and absorption need weight_sharing=False: '
                         'shared branches would change with the main kernel')
    if name == MAIN or name not in block.branch_names:
        raise ValueError(f'{name!r} is not a branch that can be grown or '
                         f'absorbed in this block ({block.branch_names})')


def grow(block: ODBB, names: Sequence[str], bn_scale: float = 0.01):
    """Activate ``names``, each BN at ``bn_scale``, function unchanged.

    The new branch starts with BN weight ``bn_scale`` and bias 0 (0 and 0 on
    channels where the main BN weight is 0, as in zero-initialised residual
    blocks); its exact eval-mode ``(kernel, bias)`` is subtracted from the
    main branch, so the block's eval-mode output does not move.
    """
    new = [n for n in names if n not in block.active]
    off = block.branches[MAIN].bn.weight.detach() == 0
    for name in new:
        _check(block, name)
        branch = block.branches[name]
        with torch.no_grad():
            branch.bn.weight.fill_(bn_scale)
            branch.bn.weight[off] = 0.0
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


__all__ = ['absorb', 'bn_scale_ratio', 'grow']
