"""The seven linear branches of an optimal diverse branch block (ODBB).

Every branch (:class:`Branch`, here and in :mod:`.online`) has an exact
equivalent KxK conv, ``kernel_bias(weight=None)``, and a per-channel output
scale, ``gamma()`` (what growing a branch sets, :mod:`.surgery`). The
branches here are ``conv(s) + BN`` (or BN alone for ``identity``) and run on
feature maps:

- ``forward(x, weight=None, gate=None)``: its output, times ``gate`` if
  given. ``weight`` is the block's main KxK kernel; a branch built with
  ``shared=True`` takes its conv kernel from it (RepNAS Eq. 5: 1x1 = centre,
  1xK = middle row, Kx1 = middle column, and the KxK of ``1x1_kxk`` is the
  whole kernel). The gate is folded into the final BN (:func:`batch_norm`).
- ``kernel_bias(weight=None)``: its exact equivalent ``(kernel, bias)`` as a
  KxK conv with stride ``stride`` and padding ``K // 2`` (eval-mode BN).

Borders: branches that apply a second conv or a pooling after a BN
(``1x1_kxk``, ``1x1_avg``) pad the BN output with the value that BN gives a
zero input, so they equal one KxK conv on a zero-padded input at the image
border too. DBB takes that value from the running statistics even in
training; we take it from the statistics the BN normalises with at that
moment (batch statistics in training), which keeps the training-time branch
one well-defined function (and gradient checkpointing exact). In eval mode
both are the running statistics, and the fusion is exact.
"""
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .transforms import (KernelBias, avg_pool_kernel, bn_of_zero,
                         centre_crop_kernel, fuse_bn, identity_kernel,
                         merge_1x1_kxk, pad_to_kernel_size)

#: Every branch type, in the one fixed order used by blocks, searches and
#: architecture files.
BRANCH_NAMES = ('1x1', 'kxk', '1x1_kxk', '1x1_avg', '1xk', 'kx1', 'identity')

NormLayer = Callable[[int], nn.Module]


def _bn_stats(bn: nn.Module):
    """(running_mean, running_var, gamma, beta, eps) of a BatchNorm."""
    ones = torch.ones_like(bn.running_mean)
    gamma = bn.weight if bn.weight is not None else ones
    beta = bn.bias if bn.bias is not None else torch.zeros_like(ones)
    return bn.running_mean, bn.running_var, gamma, beta, bn.eps


def fuse_conv_bn(kernel: Tensor, bn: nn.Module,
                 bias: Optional[Tensor] = None, axis: int = 0) -> KernelBias:
    """:func:`fuse_bn` reading the statistics from a BN module."""
    return fuse_bn(kernel, *_bn_stats(bn), bias=bias, axis=axis)


def batch_norm(bn: nn.Module, x: Tensor,
               scale: Optional[Tensor] = None) -> Tensor:
    """``bn(x) * scale``, computed as ``bn`` with its affine parameters scaled.

    A search gate multiplies a branch's output; every branch ends in a BN,
    and ``BN(x) * g`` is the BN with ``(gamma * g, beta * g)``. Folding ``g``
    into the affine parameters saves no extra activation for backward and
    no elementwise pass over it; ``d loss / d g`` comes out of the BN's own
    gamma/beta gradients. ``nn.BatchNorm2d`` takes a direct path (its
    ``forward`` with scaled parameters); other norms (SyncBatchNorm, ...) go
    through ``torch.func.functional_call`` so their own forward runs.
    """
    if scale is None:
        return bn(x)
    if getattr(bn, 'weight', None) is None or getattr(bn, 'bias',
                                                      None) is None:
        return bn(x) * scale  # no affine parameters to fold into
    weight, bias = bn.weight * scale, bn.bias * scale
    if type(bn) is not nn.BatchNorm2d:
        return torch.func.functional_call(bn, {
            'weight': weight,
            'bias': bias
        }, (x, ))
    # nn.BatchNorm2d.forward (torch 2.x), with the scaled affine parameters.
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and \
            bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    use_batch_stats = bn.training or (bn.running_mean is None
                                      and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    return F.batch_norm(x, bn.running_mean if track else None,
                        bn.running_var if track else None, weight, bias,
                        use_batch_stats, factor, bn.eps)


def pad_with_bn_of_zero(bn_out: Tensor, bn: nn.Module, padding: int,
                        bn_in: Tensor) -> Tensor:
    """Pad ``bn_out = bn(bn_in)`` with BN(0) instead of zeros (exact borders).

    BN(0) is taken as the BN computes it now: from the batch statistics of
    ``bn_in`` when it normalises with batch statistics (training), from its
    running statistics otherwise. So the padded map is always the BN of a
    zero-padded input, and a recomputation (gradient checkpointing) gives
    the same result as the first pass.
    """
    if padding == 0:
        return bn_out
    mean, var, gamma, beta, eps = _bn_stats(bn)
    if bn.training or bn.running_mean is None:
        var, mean = torch.var_mean(bn_in, dim=(0, 2, 3), unbiased=False)
    value = bn_of_zero(mean, var, gamma, beta, eps).reshape(1, -1, 1, 1)
    return F.pad(bn_out - value, (padding, ) * 4) + value


def new_kernel(out_channels, in_per_group, kh, kw,
               a: float = 5**0.5) -> nn.Parameter:
    """A conv kernel parameter, kaiming-uniform initialised with ``a``."""
    weight = nn.Parameter(torch.empty(out_channels, in_per_group, kh, kw))
    nn.init.kaiming_uniform_(weight, a=a)  # a=sqrt(5): nn.Conv2d's default
    return weight


class Branch(nn.Module):
    """What every branch has: its shape, its kernels, and the two verbs
    ``kernel_bias(weight=None)`` and ``gamma()``.

    Offline branches (here) also have ``forward(x, weight=None, gate=None)``;
    online ones (:mod:`.online`) ``kernel(weight=None, gate=None)`` instead.

    Args:
        in_channels, out_channels, kernel_size, stride, groups: those of the
            KxK conv the block replaces (``kernel_size`` odd, padding
            ``kernel_size // 2``).
        shared (bool): take the conv kernel from the block's main KxK kernel
            (weight sharing) instead of owning one.
        norm_layer: builds the BN of the branch from a channel count.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: int,
                 stride: int = 1,
                 groups: int = 1,
                 shared: bool = False,
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.groups = groups
        self.shared = shared
        self.bn = None  # the BN that ends the branch, if it has one

    #: ``a`` of the kaiming-uniform initialisation of the branch's kernels.
    kaiming_a = 5**0.5

    def gamma(self) -> Optional[Tensor]:
        """The per-channel scale of the branch output (its last BN's weight),
        or None when it has none (a BN-free branch)."""
        return None if self.bn is None else self.bn.weight

    def extra_repr(self):
        return f'shared={self.shared}'

    def reset_parameters(self):
        """A fresh branch: new kernels, its BNs back to their initial state
        (DyRep regrows the branches it removed)."""
        for m in self.children():
            if hasattr(m, 'reset_parameters'):
                m.reset_parameters()  # a BN's also resets its statistics
        if not self.shared and getattr(self, 'weight', None) is not None:
            nn.init.kaiming_uniform_(self.weight, a=self.kaiming_a)

    def _init_kernel(self, kh: int, kw: int):
        """The branch's ``kh x kw`` conv kernel: its own, or a shared crop."""
        self.kh, self.kw = kh, kw
        if not self.shared:
            self.weight = new_kernel(self.out_channels,
                                     self.in_channels // self.groups, kh, kw,
                                     self.kaiming_a)

    def _kernel(self, weight: Optional[Tensor]) -> Tensor:
        """Own kernel, or the centre crop of the main kernel (Eq. 5)."""
        if not self.shared:
            return self.weight
        if weight is None:
            raise ValueError('a shared branch needs the main kernel')
        return centre_crop_kernel(weight, self.kh, self.kw)

    def _bn_and_pad(self, u: Tensor) -> Tensor:
        """``bn_1x1(u)`` padded for the KxK op that follows (exact borders)."""
        return pad_with_bn_of_zero(
            self.bn_1x1(u), self.bn_1x1, self.kernel_size // 2, u)

    def kernel_bias(self, weight: Optional[Tensor] = None) -> KernelBias:
        raise NotImplementedError


class ConvBranch(Branch):
    """``kh x kw`` conv + BN: the ``1x1``, ``kxk``, ``1xk`` and ``kx1``
    branches.

    ``norm=False``: the conv alone (the quantization-friendly block's
    ``1x1``, ``1xk`` and ``kx1``); a gate then multiplies the kernel.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 groups=1, shared=False, norm_layer=nn.BatchNorm2d, *,
                 kh: int, kw: int, norm: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         groups, shared, norm_layer)
        self._init_kernel(kh, kw)
        self.bn = norm_layer(out_channels) if norm else None

    def forward(self, x, weight=None, gate=None):
        kernel = self._kernel(weight)
        if self.bn is None and gate is not None:
            kernel = kernel * gate
        y = F.conv2d(x, kernel, None, self.stride,
                     (self.kh // 2, self.kw // 2), 1, self.groups)
        return y if self.bn is None else batch_norm(self.bn, y, gate)

    def kernel_bias(self, weight=None):
        kernel = self._kernel(weight)
        if self.bn is None:
            bias = kernel.new_zeros(self.out_channels)
        else:
            kernel, bias = fuse_conv_bn(kernel, self.bn)
        return pad_to_kernel_size(kernel, self.kernel_size), bias


class Conv1x1KxKBranch(Branch):
    """1x1 conv + BN, then KxK conv + BN (DBB's 1x1-KxK branch).

    The 1x1 conv maps ``in_channels`` to ``in_channels`` (so the KxK conv has
    the main kernel's shape and can share it) and starts as the identity.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 groups=1, shared=False, norm_layer=nn.BatchNorm2d):
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         groups, shared, norm_layer)
        self.weight_1x1 = nn.Parameter(
            torch.empty(in_channels, in_channels // groups, 1, 1))
        nn.init.dirac_(self.weight_1x1, groups=groups)
        self.bn_1x1 = norm_layer(in_channels)
        self._init_kernel(kernel_size, kernel_size)
        self.bn = norm_layer(out_channels)

    def forward(self, x, weight=None, gate=None):
        t = self._bn_and_pad(
            F.conv2d(x, self.weight_1x1, None, 1, 0, 1, self.groups))
        y = F.conv2d(t, self._kernel(weight), None, self.stride, 0, 1,
                     self.groups)
        return batch_norm(self.bn, y, gate)

    def reset_parameters(self):
        super().reset_parameters()
        with torch.no_grad():
            nn.init.dirac_(self.weight_1x1, groups=self.groups)

    def kernel_bias(self, weight=None):
        k1, b1 = fuse_conv_bn(self.weight_1x1, self.bn_1x1)
        k2, b2 = fuse_conv_bn(self._kernel(weight), self.bn)
        return merge_1x1_kxk(k1, b1, k2, b2, self.groups)


class Conv1x1AvgBranch(Branch):
    """1x1 conv + BN, then KxK average pooling + BN (DBB's 1x1-AVG branch)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 groups=1, shared=False, norm_layer=nn.BatchNorm2d):
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         groups, shared, norm_layer)
        self._init_kernel(1, 1)
        self.bn_1x1 = norm_layer(out_channels)
        self.bn = norm_layer(out_channels)

    def forward(self, x, weight=None, gate=None):
        t = self._bn_and_pad(
            F.conv2d(x, self._kernel(weight), None, 1, 0, 1, self.groups))
        y = F.avg_pool2d(t, self.kernel_size, self.stride, 0)
        return batch_norm(self.bn, y, gate)

    def kernel_bias(self, weight=None):
        k1, b1 = fuse_conv_bn(self._kernel(weight), self.bn_1x1)
        avg = avg_pool_kernel(
            self.out_channels,
            self.kernel_size,
            self.groups,
            dtype=k1.dtype,
            device=k1.device)
        k2, b2 = fuse_conv_bn(avg, self.bn)
        return merge_1x1_kxk(k1, b1, k2, b2, self.groups)


def check_identity(in_channels: int, out_channels: int, stride: int):
    """``ValueError`` unless an identity branch fits this shape."""
    if in_channels != out_channels or stride != 1:
        raise ValueError('the identity branch needs in_channels == '
                         'out_channels and stride 1, got '
                         f'{in_channels} -> {out_channels}, stride {stride}')


class IdentityBranch(Branch):
    """BN of the input (RepVGG's identity branch): needs in == out, stride 1.

    ``norm=False``: the input itself (the quantization-friendly block's
    identity, QARepVGG's); a gate then multiplies it.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 groups=1, shared=False, norm_layer=nn.BatchNorm2d, *,
                 norm: bool = True):
        check_identity(in_channels, out_channels, stride)
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         groups, False, norm_layer)
        self.bn = norm_layer(out_channels) if norm else None
        # Without a BN, what tells the fused kernel its device and dtype.
        self.register_buffer('_like', torch.empty(0), persistent=False)

    def forward(self, x, weight=None, gate=None):
        if self.bn is None:
            return x if gate is None else x * gate
        return batch_norm(self.bn, x, gate)

    def kernel_bias(self, weight=None):
        kernel = identity_kernel(
            self.in_channels,
            self.kernel_size,
            self.groups,
            dtype=self._like.dtype,
            device=self._like.device)
        if self.bn is None:
            return kernel, kernel.new_zeros(self.out_channels)
        return fuse_conv_bn(kernel, self.bn)


def build_branch(name: str, in_channels: int, out_channels: int,
                 kernel_size: int, stride: int = 1, groups: int = 1,
                 shared: bool = False,
                 norm_layer: NormLayer = nn.BatchNorm2d,
                 norm: bool = True) -> Branch:
    """Build the branch called ``name`` (one of :data:`BRANCH_NAMES`);
    ``norm=False``: without its (last) BN, for the one-layer branches."""
    args = (in_channels, out_channels, kernel_size, stride, groups, shared,
            norm_layer)
    k = kernel_size
    conv_shapes = {'1x1': (1, 1), 'kxk': (k, k), '1xk': (1, k), 'kx1': (k, 1)}
    if name in conv_shapes:
        kh, kw = conv_shapes[name]
        return ConvBranch(*args, kh=kh, kw=kw, norm=norm)
    if name == 'identity':
        return IdentityBranch(*args, norm=norm)
    if name not in BRANCH_NAMES:
        raise ValueError(f'unknown branch {name!r}; branches are '
                         f'{BRANCH_NAMES}')
    if not norm:
        raise ValueError(f'the {name} branch keeps its BNs: only the '
                         'one-layer branches can be built without')
    return (Conv1x1KxKBranch if name == '1x1_kxk' else Conv1x1AvgBranch)(*args)


def legal_branches(in_channels: int, out_channels: int, stride: int) -> tuple:
    """The branches a block with this shape can have, in canonical order."""
    identity_ok = in_channels == out_channels and stride == 1
    return tuple(name for name in BRANCH_NAMES
                 if name != 'identity' or identity_ok)
