"""Block surgery of dynamic re-parameterization (DyRep), exact both ways.

:func:`grow` and :func:`absorb` add branches to / remove branches from an
active block without changing its eval-mode function: a branch's exact
``(kernel, bias)`` is taken from / given back to the main ``kxk`` branch.
Pure PyTorch: nothing here knows about saliency or schedules (that is
``repnas_mm.search.dyrep``).
"""
from typing import Sequence

import torch

from .block import MAIN, ODBB


def _shift_main(block: ODBB, kernel: torch.Tensor, bias: torch.Tensor,
                sign: float):
    """Add ``sign * (kernel, bias)`` to the main branch's function.

    The main branch computes ``(W * x - mean) * gamma / std + beta``, or,
    without a BN, ``gamma * (W * x)`` (online: ``gamma`` is the branch's
    scale, no bias in any online branch; ``std`` 1). A channel with
    ``gamma == 0`` (a zero-initialised residual BN) cannot take a kernel
    through ``W``; where one must be added there, the channel is first
    switched on with ``gamma = 1``, ``W = 0`` and (with a BN) ``beta``
    raised by ``mean / std``, which leaves its output as it was.
    """
    main = block.branches[MAIN]
    gamma = main.gamma()
    bn = main.bn
    with torch.no_grad():
        std = 1.0 if bn is None else torch.sqrt(bn.running_var + bn.eps)
        off = (gamma == 0) & (kernel.flatten(1).abs().sum(1) > 0)
        if off.any():
            main.weight[off] = 0.0
            gamma[off] = 1.0
            if bn is not None:
                bn.bias[off] += bn.running_mean[off] / std[off]
        scale = (gamma / std).reshape(-1, 1, 1, 1)
        # Channels still off take no kernel (theirs is zero): no 0 / 0.
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        main.weight.add_(sign * kernel / scale)
        if bn is not None:
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
    main branch, so the block's eval-mode output does not move. An online
    branch starts with its per-channel scale at ``bn_scale`` instead; a
    BN-free branch (quantization-friendly block) with its fresh kernel
    times ``bn_scale``, and the BN-free identity, which has nothing to
    scale, whole.
    """
    new = [n for n in names if n not in block.active]
    off = block.branches[MAIN].gamma().detach() == 0
    for name in new:
        _check(block, name)
        branch = block.branches[name]
        gamma = branch.gamma()
        with torch.no_grad():
            if gamma is not None:
                gamma.fill_(bn_scale)
                gamma[off] = 0.0
            elif getattr(branch, 'weight', None) is not None:
                branch.weight.mul_(bn_scale)  # BN-free: the kernel scales
                branch.weight[off] = 0.0
            if branch.bn is not None:
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
        branch.reset_parameters()
    block.active = [n for n in block.active if n not in gone]
    return released


def bn_scale_ratio(block: ODBB, name: str) -> float:
    """mean |BN weight| of a branch over that of the main branch.

    Where either branch has no BN (online branches; BN-free ones of the
    quantization-friendly form), nothing reads the output scale off a BN
    (a branch's kernel grows freely): the ratio is that of the mean
    per-channel norms of the branches' kernels (BN fused, or scaled),
    what the BN weights measure.
    """
    branch, main = block.branches[name], block.branches[MAIN]
    if branch.bn is None or main.bn is None:
        def size(b):
            kernel = b.kernel_bias(block.weight)[0]
            return kernel.detach().flatten(1).norm(dim=1).mean()
        return float(size(branch) / size(main).clamp_min(1e-12))
    ratio = branch.bn.weight.detach().abs().mean() / \
        main.bn.weight.detach().abs().mean().clamp_min(1e-12)
    return float(ratio)


__all__ = ['absorb', 'bn_scale_ratio', 'grow']
