"""The online ODBB form (OREPA, CVPR'22): its seven branches and its block.

An offline branch (:mod:`.branches`) ends in its own BN, so in training the
block has to run every branch over the feature map. Here each branch's BN is
replaced by a learnable per-channel scale, so every branch is a *linear*
function of its input in training too, and equals one KxK conv. The block
(:class:`OnlineODBB`, ``form='online'``) sums the active branches' kernels
every forward pass (kernel-sized tensors: cheap), runs ONE conv over the
feature map and ONE BN after it; the composition is the fusion
(:mod:`.transforms`).

A branch's own verb is ``kernel(weight=None, gate=None)``: its KxK kernel,
scale (and a search gate) included, differentiable with respect to its
parameters and the gate (``weight`` is the block's main kernel when the
branch shares it, RepNAS Eq. 5). It has no bias: the block's BN supplies the
only one. The gate multiplies the per-channel scale, and the scale is applied
where the kernel is smallest (before centring a 1x1, 1xK or Kx1 kernel in the
KxK frame, before spreading a 1x1 over the pooling window); the 1x1-KxK
merge has its own backward (:class:`ScaledMerge`). So autograd keeps one
kernel-sized tensor per block for the backward pass, the composed kernel the
conv needs, whatever the branches (``tools/benchmark_search.py`` measures it).

Borders: ``1x1_kxk`` and ``1x1_avg`` compose exactly without the BN(0)
padding of the offline branches. There a BN sits between the two steps, and
the BN of the zero border is not zero; here nothing does, so the
intermediate map of a zero-padded input is zero on its border, which is
exactly the zero padding the composed KxK conv sees.

Initialisation, from OREPA's code (JUGGHM/OREPA_CVPR2022 ``blocks.py``,
class ``OREPA``):

- per-channel scales ("vector"): ``kxk`` 0.25, ``1x1_avg`` 0.25,
  ``1x1_kxk`` 0.5, ``1x1`` 1.0 (OREPA's origin, avg, 1x1-kxk and 1x1
  branches). OREPA has no 1xK, Kx1 or identity branch: ``1xk`` and ``kx1``
  get 0.5, its value for the other branches that add a second kernel shape
  (1x1-kxk, depthwise-separable); ``identity`` gets 1.0, the value of the
  other branch without a KxK support (1x1). OREPA's frequency-prior and
  depthwise-separable branches are not in the ODBB space.
- kernels: kaiming-uniform with ``a=0`` (OREPA), not ``nn.Conv2d``'s
  ``a=sqrt(5)`` (offline branches keep that: their BNs rescale anyway).
- the 1x1 of ``1x1_kxk``: the identity plus a learnable residual that starts
  at zero (OREPA's ``idconv1``), so weight decay pulls it towards the
  identity rather than towards zero.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .block import MAIN, ODBB
from .branches import Branch, check_identity, fuse_conv_bn
from .transforms import (KernelBias, identity_kernel, merge_1x1_kxk_kernel,
                         pad_to_kernel_size)

#: Initial per-channel scale of each branch (see the module docstring).
INIT_SCALE = {
    '1x1': 1.0,
    'kxk': 0.25,
    '1x1_kxk': 0.5,
    '1x1_avg': 0.25,
    '1xk': 0.5,
    'kx1': 0.5,
    'identity': 1.0,
}


class OnlineBranch(Branch):
    """An online branch: a KxK kernel times a per-channel scale; no BN, no
    bias. It does not run on feature maps: its block convolves with the
    summed kernels."""

    kaiming_a = 0.0  # OREPA's
    name = None

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 groups=1, shared=False, norm_layer=None, *,
                 name: Optional[str] = None):
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         groups, shared, norm_layer)
        self.name = name or type(self).name
        self.scale = nn.Parameter(
            torch.full((out_channels, ), INIT_SCALE[self.name]))

    def kernel(self, weight: Optional[Tensor] = None,
               gate: Optional[Tensor] = None) -> Tensor:
        """The branch's KxK kernel, times its per-channel scale (and gate)."""
        scale = self.scale if gate is None else self.scale * gate
        return self._compose(weight, scale.reshape(-1, 1, 1, 1))

    def _compose(self, weight: Optional[Tensor], scale: Tensor) -> Tensor:
        """The KxK kernel, output channel ``o`` scaled by ``scale[o]``."""
        raise NotImplementedError

    def kernel_bias(self, weight=None):
        """``(kernel, 0)``: the common branch verb (DyRep's surgery)."""
        kernel = self.kernel(weight)
        return kernel, kernel.new_zeros(self.out_channels)

    def gamma(self) -> Tensor:
        """The per-channel scale (what a BN's weight is offline)."""
        return self.scale

    def reset_parameters(self):
        super().reset_parameters()
        with torch.no_grad():
            self.scale.fill_(INIT_SCALE[self.name])


class OnlineConvBranch(OnlineBranch):
    """``kh x kw`` conv, scaled: ``1x1``, ``kxk``, ``1xk``, ``kx1``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 groups=1, shared=False, norm_layer=None, *, name: str):
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         groups, shared, norm_layer, name=name)
        k = kernel_size
        self._init_kernel(*{'1x1': (1, 1), 'kxk': (k, k), '1xk': (1, k),
                            'kx1': (k, 1)}[name])

    def _compose(self, weight, scale):
        return pad_to_kernel_size(self._kernel(weight) * scale,
                                  self.kernel_size)


class Online1x1KxKBranch(OnlineBranch):
    """1x1 conv (identity + residual), then KxK conv; scaled."""

    name = '1x1_kxk'

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 groups=1, shared=False, norm_layer=None):
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         groups, shared, norm_layer)
        self.weight_1x1_residual = nn.Parameter(
            torch.zeros(in_channels, in_channels // groups, 1, 1))
        self._init_kernel(kernel_size, kernel_size)

    def weight_1x1(self) -> Tensor:
        """The first (1x1) kernel: the identity plus the learned residual."""
        r = self.weight_1x1_residual
        return r + identity_kernel(self.in_channels, 1, self.groups,
                                   dtype=r.dtype, device=r.device)

    def _compose(self, weight, scale):
        return ScaledMerge.apply(self.weight_1x1(), self._kernel(weight),
                                 scale, self.groups)

    def reset_parameters(self):
        super().reset_parameters()
        with torch.no_grad():
            self.weight_1x1_residual.zero_()


class ScaledMerge(torch.autograd.Function):
    """``merge_1x1_kxk_kernel(k1, k2, groups) * scale``, keeping for the
    backward pass only its inputs (parameters, not the merged kernel).

    With ``G`` the gradient of the result and ``H[o, m] = sum_i G[o, i]
    k1[m, i]`` (per group and kernel position, the same merge with ``k1``
    transposed): ``dk2 = H * scale``, ``dscale[o] = sum(H[o] * k2[o])`` and
    ``dk1[m, i] = sum_{o, u, v} scale[o] G[o, i] k2[o, m]``. Autograd would
    keep the merged kernel (one kernel-sized tensor per block) or, with
    checkpointing, compute the merge twice.
    """

    @staticmethod
    def forward(ctx, k1, k2, scale, groups):
        ctx.groups = groups
        ctx.save_for_backward(k1, k2, scale)
        return merge_1x1_kxk_kernel(k1, k2, groups) * scale

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        k1, k2, scale = ctx.saved_tensors
        g = ctx.groups
        mid, in_g = k1.shape[:2]
        out, mid_g, kh, kw = k2.shape
        k1_t = k1.reshape(g, mid // g, in_g).transpose(1, 2).reshape(
            g * in_g, mid // g, 1, 1)
        h = merge_1x1_kxk_kernel(k1_t, grad, g)  # (out, mid_g, kh, kw)
        d_k1 = d_k2 = d_scale = None
        if ctx.needs_input_grad[1]:
            d_k2 = h * scale
        if ctx.needs_input_grad[2]:
            d_scale = (h * k2).sum((1, 2, 3)).reshape(scale.shape)
        if ctx.needs_input_grad[0]:
            grad_s = (grad * scale).reshape(g, out // g, in_g, kh * kw)
            d_k1 = torch.einsum('goik,gomk->gmi', grad_s,
                                k2.reshape(g, out // g, mid_g, kh * kw))
            d_k1 = d_k1.reshape(mid, in_g, 1, 1)
        return d_k1, d_k2, d_scale, None


class Online1x1AvgBranch(OnlineBranch):
    """1x1 conv, then KxK average pooling; scaled."""

    name = '1x1_avg'

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 groups=1, shared=False, norm_layer=None):
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         groups, shared, norm_layer)
        self._init_kernel(1, 1)

    def _compose(self, weight, scale):
        # 1x1 then KxK average pooling: each 1x1 weight spread evenly over
        # the KxK window (merge_1x1_kxk with avg_pool_kernel, without
        # building either; the expansion is a view).
        k = self.kernel_size
        return (self._kernel(weight) * (scale / k**2)).expand(-1, -1, k, k)


class OnlineIdentityBranch(OnlineBranch):
    """The input itself, scaled per channel: needs in == out, stride 1."""

    name = 'identity'

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 groups=1, shared=False, norm_layer=None):
        check_identity(in_channels, out_channels, stride)
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         groups, False, norm_layer)

    def _compose(self, weight, scale):
        # The scaled identity as a 1x1 kernel, centred.
        identity = identity_kernel(self.in_channels, 1, self.groups,
                                   dtype=scale.dtype, device=scale.device)
        return pad_to_kernel_size(identity * scale, self.kernel_size)


def build_online_branch(name: str, in_channels: int, out_channels: int,
                        kernel_size: int, stride: int = 1, groups: int = 1,
                        shared: bool = False,
                        norm_layer=None) -> OnlineBranch:
    """The online form of the branch called ``name``."""
    args = (in_channels, out_channels, kernel_size, stride, groups, shared)
    if name in ('1x1', 'kxk', '1xk', 'kx1'):
        return OnlineConvBranch(*args, name=name)
    kinds = {'1x1_kxk': Online1x1KxKBranch, '1x1_avg': Online1x1AvgBranch,
             'identity': OnlineIdentityBranch}
    if name not in kinds:
        raise ValueError(f'unknown branch {name!r}')
    return kinds[name](*args)


class OnlineODBB(ODBB):
    """The online form of the ODBB (OREPA): linear in training too.

    The branches have per-channel scales instead of BNs (the branches
    above), so every forward pass composes the active branches into one KxK
    kernel (:meth:`kernel`) and runs one conv and one BN (``self.bn``) over
    the feature map: about the cost of a plain conv whatever the branches.
    Fuses to the same conv as the other forms.
    """

    form = 'online'
    POST_NORM = True
    kaiming_a = OnlineBranch.kaiming_a

    def _build_branch(self, name, shared, norm_layer):
        return build_online_branch(name, self.in_channels, self.out_channels,
                                   self.kernel_size, self.stride, self.groups,
                                   shared)

    def _forward_branches(self, x: Tensor) -> Tensor:
        return self.bn(
            F.conv2d(x, self.kernel(), None, self.stride,
                     self.kernel_size // 2, 1, self.groups))

    def _kernel_bias_branches(self) -> KernelBias:
        return fuse_conv_bn(self.kernel(), self.bn)

    def kernel(self) -> Tensor:
        """The KxK kernel the block convolves with (before its BN): the sum
        of the active branches' kernels.

        A gate multiplies its branch's per-channel scale, so the gates'
        gradients flow through the composition; inactive branches are not
        composed at all.
        """
        if self.fused_conv is not None:
            raise RuntimeError('kernel() is the multi-branch block\'s; a '
                               'fused block has kernel_bias()')
        total = None
        for i, name in enumerate(self.branch_names):
            if name in self._active:
                kernel = self.branches[name].kernel(self.weight,
                                                    self._gate(i))
                total = kernel if total is None else total + kernel
        return total

    def _neutral_main(self):
        self.branches[MAIN].scale.fill_(1.0)
