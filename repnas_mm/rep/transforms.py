"""Structural re-parameterization transforms: pure tensor functions.

One function per transform of the papers (RepNAS Eqs. 1-4, the DBB
transforms I-VI, ACNet's kernel skeletons, RepVGG's identity). Every kernel
is laid out as ``(out_channels, in_channels // groups, kh, kw)``, every bias
as ``(out_channels,)``. Nothing here has state or imports beyond torch, so
each transform can be tested on its own against ``F.conv2d``.
"""
from typing import Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

KernelBias = Tuple[Tensor, Tensor]


def fuse_bn(kernel: Tensor, running_mean: Tensor, running_var: Tensor,
            gamma: Tensor, beta: Tensor, eps: float,
            bias: Optional[Tensor] = None, axis: int = 0) -> KernelBias:
    """Conv followed by BN -> one conv (RepNAS Eq. 1, DBB I).

    ``F'_j = gamma_j / sigma_j * F_j``,
    ``b'_j = beta_j + (b_j - mu_j) * gamma_j / sigma_j`` (``b = 0`` for a
    conv without ``bias``). ``axis``: the kernel's output-channel axis (1
    for a transposed conv's ``(in, out, kh, kw)`` kernel).
    """
    scale = gamma / torch.sqrt(running_var + eps)
    shift = -running_mean if bias is None else bias - running_mean
    shape = [1] * kernel.dim()
    shape[axis] = -1
    return kernel * scale.reshape(shape), beta + shift * scale


def bn_of_zero(running_mean: Tensor, running_var: Tensor, gamma: Tensor,
               beta: Tensor, eps: float) -> Tensor:
    """What an eval-mode BN outputs for a zero input, per channel.

    Branches that pad *after* a BN (1x1-KxK, 1x1-avg) pad with this value
    so that they equal one KxK conv on a zero-padded input, borders
    included (DBB's BNAndPad).
    """
    return beta - running_mean * gamma / torch.sqrt(running_var + eps)


def add_branches(kernel_biases: Iterable[KernelBias]) -> KernelBias:
    """Parallel convs of one kernel size -> one conv (RepNAS Eq. 2, DBB II)."""
    kernels, biases = zip(*kernel_biases)
    return sum(kernels), sum(biases)


def merge_1x1_kxk(k1: Tensor, b1: Tensor, k2: Tensor, b2: Tensor,
                  groups: int = 1) -> KernelBias:
    """A 1x1 conv followed by a KxK conv -> one KxK conv (RepNAS Eq. 3,
    DBB III).

    ``k1``: ``(mid, in // groups, 1, 1)``; ``k2``: ``(out, mid // groups, K,
    K)``; both convs have the same ``groups``. The 1x1 bias ``b1`` passes
    through the KxK kernel, so the second conv must see ``b1`` at the border
    too (pad with it, not with zeros) for the merge to be exact there.
    """
    out_channels = k2.shape[0]
    mid = k1.shape[0]
    if out_channels % groups or mid % groups:
        raise ValueError(f'channels ({mid}, {out_channels}) are not '
                         f'divisible by groups={groups}')
    mid_g, out_g = mid // groups, out_channels // groups
    kernel = merge_1x1_kxk_kernel(k1, k2, groups)
    # Row o of the KxK kernel sees the 1x1 biases of its own group.
    b1_per_row = b1.reshape(groups, mid_g).repeat_interleave(out_g, dim=0)
    bias = (k2.sum(dim=(2, 3)) * b1_per_row).sum(dim=1) + b2
    return kernel, bias


def merge_1x1_kxk_kernel(k1: Tensor, k2: Tensor, groups: int = 1) -> Tensor:
    """The kernel of :func:`merge_1x1_kxk` alone (bias-free convs)."""
    out_channels, mid = k2.shape[0], k1.shape[0]
    mid_g, out_g = mid // groups, out_channels // groups
    kernels = []
    for g in range(groups):
        k1_g = k1[g * mid_g:(g + 1) * mid_g]  # (mid_g, in_g, 1, 1)
        k2_g = k2[g * out_g:(g + 1) * out_g]  # (out_g, mid_g, K, K)
        # sum_m k2[o, m, u, v] * k1[m, i]: a conv of k2 with k1^T.
        kernels.append(F.conv2d(k2_g, k1_g.permute(1, 0, 2, 3)))
    return torch.cat(kernels, dim=0) if groups > 1 else kernels[0]


def avg_pool_kernel(channels: int, kernel_size: int, groups: int = 1,
                    dtype=None, device=None) -> Tensor:
    """A KxK average pooling as a KxK conv kernel (RepNAS Eq. 4, DBB V).

    Pooling acts per channel, so only the weight from a channel to itself is
    non-zero: ``1 / K^2`` everywhere in its KxK window.
    """
    in_per_group = channels // groups
    kernel = torch.zeros(
        channels, in_per_group, kernel_size, kernel_size, dtype=dtype,
        device=device)
    rows = torch.arange(channels, device=device)
    kernel[rows, rows % in_per_group] = 1.0 / kernel_size**2
    return kernel


def identity_kernel(channels: int, kernel_size: int, groups: int = 1,
                    dtype=None, device=None) -> Tensor:
    """The identity map as a KxK conv kernel (RepVGG), for any ``groups``."""
    in_per_group = channels // groups
    kernel = torch.zeros(
        channels, in_per_group, kernel_size, kernel_size, dtype=dtype,
        device=device)
    rows = torch.arange(channels, device=device)
    centre = kernel_size // 2
    kernel[rows, rows % in_per_group, centre, centre] = 1.0
    return kernel


def pad_to_kernel_size(kernel: Tensor, kernel_size: int) -> Tensor:
    """Centre a ``kh x kw`` kernel in a ``K x K`` frame (DBB VI, ACNet).

    Rows and columns are padded separately, so 1xK and Kx1 kernels land on
    the middle row and column. (``F.pad`` takes the *last* dimension first:
    ``(left, right, top, bottom)``.)
    """
    kh, kw = kernel.shape[-2:]
    if kh > kernel_size or kw > kernel_size or (kernel_size - kh) % 2 or (
            kernel_size - kw) % 2:
        raise ValueError(f'cannot centre a {kh}x{kw} kernel in a '
                         f'{kernel_size}x{kernel_size} frame')
    ph, pw = (kernel_size - kh) // 2, (kernel_size - kw) // 2
    return F.pad(kernel, (pw, pw, ph, ph))


def centre_crop_kernel(kernel: Tensor, kh: int, kw: int) -> Tensor:
    """The centre ``kh x kw`` part of a ``K x K`` kernel (RepNAS Eq. 5).

    Weight sharing: 1x1 = centre, 1xK = middle row, Kx1 = middle column.
    """
    size_h, size_w = kernel.shape[-2:]
    top, left = size_h // 2 - kh // 2, size_w // 2 - kw // 2
    return kernel[..., top:top + kh, left:left + kw]


def refocus_kernel(base: Tensor, transform: Tensor, map_groups: int) -> Tensor:
    """RefConv's refocused kernel ``W_t = W_b * W_r + W_b``.

    The base kernel ``(out, in // groups, K, K)`` is read as one image of
    ``out * in // groups`` channels of size ``K x K`` (one channel per 2-D
    kernel); ``transform`` (``W_r``) is a conv over that image with
    ``map_groups`` groups and ``K // 2``-style same padding of its own size,
    so ``W_t`` has the base kernel's shape. Zero ``W_r`` gives ``W_b``.
    """
    out, in_g, kh, kw = base.shape
    image = base.reshape(1, out * in_g, kh, kw)
    mh, mw = transform.shape[-2:]
    mixed = F.conv2d(image, transform, None, 1, (mh // 2, mw // 2), 1,
                     map_groups)
    return base + mixed.reshape(base.shape)
