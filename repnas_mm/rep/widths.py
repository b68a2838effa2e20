"""Narrower convolutions, exactly: keeping a subset of a conv's channels.

A width search trains the full-width network with a 0/1 gate on every
block's output channels (after its activation). A channel gated to 0 is 0
wherever it goes, so the next conv's weights for it are dead; the kept
channels compute what they did. So the narrow network is the full-width
one *fused*, each fused conv keeping the rows of its kept output channels
and the columns of the previous block's kept channels
(:func:`select_channels`). Every branch fuses into the KxK kernel first, so
nothing here depends on the branches: an identity branch whose input and
output channels differ in the narrow network is simply the part of the
identity kernel the kept rows and columns select.

Grouped convs stay grouped: the kept channels must be the same number in
every group, on both sides (:func:`balanced_top` picks them so).
"""
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor


def _per_group(index: Tensor, channels: int, groups: int, what: str):
    """``index`` split by group (local indices), equal counts checked."""
    size = channels // groups
    parts = [index[(index // size) == g] - g * size for g in range(groups)]
    if len({len(p) for p in parts}) != 1:
        raise ValueError(f'the kept {what} channels must be as many in each '
                         f'of the {groups} groups, got '
                         f'{[len(p) for p in parts]}')
    return parts


def select_channels(conv: nn.Conv2d, out_index: Optional[Tensor] = None,
                    in_index: Optional[Tensor] = None) -> nn.Conv2d:
    """A conv computing channels ``out_index`` of ``conv`` from input
    channels ``in_index`` only (the others being zero); None keeps all.

    Exact: for an input whose other channels are zero, the new conv's
    output is ``conv``'s output at ``out_index``. Groups are kept, so each
    group must keep as many channels as the others.
    """
    weight = conv.weight.detach()
    out_c, in_per_group = weight.shape[:2]
    groups = conv.groups
    in_c = in_per_group * groups
    device = weight.device
    out_index = torch.arange(out_c, device=device) if out_index is None \
        else torch.as_tensor(out_index, device=device).sort().values
    in_index = torch.arange(in_c, device=device) if in_index is None \
        else torch.as_tensor(in_index, device=device).sort().values
    if len(out_index) == 0 or len(in_index) == 0:
        raise ValueError('a conv keeps at least one input and one output '
                         'channel')
    outs = _per_group(out_index, out_c, groups, 'output')
    ins = _per_group(in_index, in_c, groups, 'input')
    out_size = out_c // groups
    rows = [weight[o + g * out_size][:, i]
            for g, (o, i) in enumerate(zip(outs, ins))]
    new = nn.Conv2d(len(in_index), len(out_index), conv.kernel_size,
                    conv.stride, conv.padding, conv.dilation, groups,
                    conv.bias is not None, conv.padding_mode).to(weight)
    with torch.no_grad():
        new.weight.copy_(torch.cat(rows))
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach()[out_index])
    return new


def balanced_top(scores: Tensor, keep: int, groups: int = 1) -> Tensor:
    """Sorted indices of the ``keep`` highest ``scores``, the same number
    (``keep // groups``) in each of ``groups`` equal groups."""
    channels = scores.numel()
    if keep % groups or channels % groups:
        raise ValueError(f'keep={keep} and {channels} channels must be '
                         f'multiples of groups={groups}')
    size = channels // groups
    picks = [scores[g * size:(g + 1) * size].detach().topk(
        keep // groups, sorted=False).indices + g * size
        for g in range(groups)]
    return torch.cat(picks).sort().values


__all__ = ['balanced_top', 'select_channels']
