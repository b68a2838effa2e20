"""RefConv: weight re-parameterization of a trained convolution.

``RefConv`` keeps a trained conv's kernel ``W_b`` frozen and learns a
refocusing transform ``W_r`` (a conv applied to the kernel itself, see
:func:`~.transforms.refocus_kernel`): ``W_t = W_b * W_r + W_b``. ``W_r`` starts
at zero, so a converted model computes exactly what it did; after training,
``W_t`` is the weight of a plain conv of the original layout (no inference
cost).

Groups of ``W_r`` (the slides' ``G = C_out C_in / g^2``): the kernel image
has ``C_out C_in / g`` channels, split into ``G`` groups of ``g`` channels.
A depthwise conv (``g = C_in = C_out``) gets one group, a dense transform
mixing the kernels of all channels; a dense conv (``g = 1``) gets one group
per 2-D kernel, a depthwise transform that refocuses each kernel on its own.
"""
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .outputs import eval_outputs, outputs_match, probe_input
from .transforms import refocus_kernel


class RefConv(nn.Module):
    """A conv whose kernel is the frozen ``weight`` refocused by ``refocus``.

    Build it from a trained ``nn.Conv2d`` with :meth:`from_conv`; turn it back
    into one with :meth:`to_conv`. ``weight`` is a (persistent) buffer: it is
    saved and loaded but never trained; ``refocus`` (``W_r``, shape
    ``(C_out C_in / g, g, k, k)``) and the conv's ``bias`` are trained. The
    state dict of the plain conv loads too (as ``W_b``, with ``W_r = 0``).

    Args:
        weight (Tensor): the base kernel ``(C_out, C_in / groups, K, K)``.
        bias (Tensor, optional): the conv's bias (trained on).
        stride, padding, dilation, groups: those of the conv.
        map_kernel_size (int): odd ``k`` of the refocusing transform.
    """

    def __init__(self,
                 weight: Tensor,
                 bias: Optional[Tensor] = None,
                 stride=1,
                 padding=0,
                 dilation=1,
                 groups: int = 1,
                 map_kernel_size: int = 3):
        super().__init__()
        if map_kernel_size % 2 != 1:
            raise ValueError(f'map_kernel_size must be odd, got '
                             f'{map_kernel_size}')
        out_channels, in_per_group = weight.shape[:2]
        self.in_channels = in_per_group * groups
        self.out_channels = out_channels
        self.kernel_size = tuple(weight.shape[2:])
        self.stride, self.padding = stride, padding
        self.dilation, self.groups = dilation, groups
        self.register_buffer('weight', weight.detach().clone())
        self.map_groups = out_channels * in_per_group // groups
        self.refocus = nn.Parameter(
            weight.new_zeros(out_channels * in_per_group, groups,
                             map_kernel_size, map_kernel_size))
        self.bias = None if bias is None else nn.Parameter(
            bias.detach().clone())

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, map_kernel_size: int = 3):
        """A RefConv computing exactly what ``conv`` computes."""
        if conv.padding_mode != 'zeros' or isinstance(conv.padding, str):
            raise ValueError('RefConv takes convs with explicit zero padding')
        return cls(conv.weight, conv.bias, conv.stride, conv.padding,
                   conv.dilation, conv.groups, map_kernel_size)

    def kernel(self) -> Tensor:
        """``W_t``, differentiable with respect to ``refocus``."""
        return refocus_kernel(self.weight, self.refocus, self.map_groups)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernel(), self.bias, self.stride,
                        self.padding, self.dilation, self.groups)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A plain conv's weights (the stock checkpoint a fine-tune starts
        # from) load as the base with W_r = 0: W_t is that conv's kernel.
        key = prefix + 'refocus'
        plain = key not in state_dict and prefix + 'weight' in state_dict
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if plain:
            missing_keys.remove(key)
            with torch.no_grad():
                self.refocus.zero_()

    def to_conv(self) -> nn.Conv2d:
        """The plain conv of the original layout, with kernel ``W_t``."""
        conv = nn.Conv2d(self.in_channels, self.out_channels,
                         self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, self.bias is not None)
        conv = conv.to(self.weight)
        with torch.no_grad():
            conv.weight.copy_(self.kernel())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        conv.train(self.training)
        return conv

    def extra_repr(self):
        return (f'{self.in_channels}, {self.out_channels}, '
                f'kernel_size={self.kernel_size}, stride={self.stride}, '
                f'padding={self.padding}, groups={self.groups}, '
                f'map_kernel_size={self.refocus.shape[-1]}')


def _plain_kxk(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size[0] > 1
            and conv.kernel_size[1] > 1 and conv.padding_mode == 'zeros'
            and not isinstance(conv.padding, str))


def convert_to_refconv(model: nn.Module,
                       example: Optional[Tensor] = None,
                       map_kernel_size: int = 3) -> List[str]:
    """Replace every plain KxK ``nn.Conv2d`` of ``model`` by a RefConv
    starting from its kernel, in place; return the converted names.

    1x1 convs stay (refocusing a dense conv's 1x1 kernel only scales each
    weight). The model's outputs on a random ``example``
    (default 1x3x64x64) must not change (``ValueError`` otherwise): zero
    ``W_r`` makes each RefConv its conv.
    """
    names = [n for n, m in model.named_modules() if _plain_kxk(m)]
    probe = probe_input(model, example)
    before = eval_outputs(model, probe)
    for name in names:
        model.set_submodule(
            name, RefConv.from_conv(model.get_submodule(name),
                                    map_kernel_size))
    if not outputs_match(eval_outputs(model, probe), before, rtol=1e-5,
                         atol=1e-6):
        raise ValueError('convert_to_refconv changed the model\'s outputs')
    return names


def restore_refconvs(model: nn.Module) -> int:
    """Replace every RefConv of ``model`` by its plain conv (in place);
    return how many."""
    restored = 0
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, RefConv):
                setattr(parent, attr, child.to_conv())
                restored += 1
    return restored


__all__ = ['RefConv', 'convert_to_refconv', 'restore_refconvs']
