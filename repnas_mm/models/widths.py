"""A width-searched ODBBNet, shipped narrow: exact channel removal.

:func:`narrow_odbbnet` turns a full-width ODBBNet whose blocks' outputs are
gated to 0 outside some channels into the fused network that has only those
channels (:func:`repnas_mm.rep.widths.select_channels` on every fused
conv). The two compute the same thing on the kept channels, in eval mode.
"""
import copy
from typing import Optional, Sequence

from torch import Tensor

from repnas_mm.rep.widths import select_channels

from .backbones.odbbnet import ODBBNet


def narrow_odbbnet(net: ODBBNet,
                   keep: Sequence[Optional[Tensor]]) -> ODBBNet:
    """The fused ODBBNet with, in block ``i`` (stem first), only the output
    channels ``keep[i]`` (None: all of them).

    ``net`` may be multi-branch (a fused copy is made) or fused; it is not
    changed. The result is built with ``widths=`` and ``deploy=True``, so
    its state dict loads into ``ODBBNet(..., widths=..., deploy=True)``
    strictly.
    """
    fused = copy.deepcopy(net)
    fused.switch_to_deploy()
    layers = fused.layers()
    if len(keep) != len(layers):
        raise ValueError(f'{len(keep)} channel sets for {len(layers)} blocks')
    widths = [w if k is None else len(k)
              for k, w in zip(keep, fused.widths)]
    narrow = ODBBNet(
        dict(fused.arch, name=fused.arch_name),
        in_channels=fused.stem.conv.in_channels,
        branches=[list(layer.conv.branch_names) for layer in layers],
        kernel_size=fused.kernel_size,
        widths=widths,
        out_indices=fused.out_indices,
        deploy=True)
    previous: Optional[Tensor] = None
    for layer, target, kept in zip(layers, narrow.layers(), keep):
        conv = select_channels(layer.conv.fused_conv, kept, previous)
        target.conv.fused_conv.load_state_dict(conv.state_dict())
        previous = kept
    narrow.to(next(fused.parameters()))
    return narrow.train(net.training)


def narrow_model(model, keep: Sequence[Optional[Tensor]]):
    """A model (``backbone`` an ODBBNet: a classifier, a detector) with the
    narrow fused backbone, in place, and the first layer that reads the
    backbone's last output (the neck's, or the head's when the neck has no
    weights: a linear layer or a plain conv) keeping only the inputs of the
    kept channels. Its ``in_channels`` attribute follows. Returns the
    model; ``ValueError`` for a first layer it cannot narrow."""
    import torch
    import torch.nn as nn
    full = model.backbone.widths[-1]
    last = keep[-1]
    consumer, name, layer = _first_reader(model, full)
    model.backbone = narrow_odbbnet(model.backbone, keep)
    if last is None:
        return model
    index = torch.as_tensor(last, device=layer.weight.device)
    if isinstance(layer, nn.Linear):
        new = nn.Linear(len(index), layer.out_features,
                        layer.bias is not None).to(layer.weight)
        with torch.no_grad():
            new.weight.copy_(layer.weight[:, index])
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
    else:
        new = select_channels(layer, None, index)
    consumer.set_submodule(name, new)
    if getattr(consumer, 'in_channels', None) == full:
        consumer.in_channels = len(index)
    return model


def _first_reader(model, channels: int):
    """(neck or head, the name in it, the layer) of the first weighted
    layer after the backbone; ValueError unless it is a linear layer or a
    plain conv reading ``channels`` inputs."""
    import torch.nn as nn
    for part in ('neck', 'head', 'bbox_head'):
        consumer = getattr(model, part, None)
        if consumer is None:
            continue
        for name, layer in consumer.named_modules():
            if not isinstance(getattr(layer, 'weight', None), nn.Parameter):
                continue
            reads = layer.in_features if isinstance(layer, nn.Linear) else \
                getattr(layer, 'in_channels', None)
            if type(layer) not in (nn.Linear, nn.Conv2d) or reads != channels:
                raise ValueError(
                    f'the first layer after the backbone, {part}.{name} '
                    f'({type(layer).__name__}), is no linear layer or plain '
                    f'conv reading its {channels} channels: it cannot take '
                    'the narrow backbone')
            return consumer, name, layer
    raise ValueError('no layer after the backbone to narrow (a model with '
                     'a neck or a head is needed)')


__all__ = ['narrow_model', 'narrow_odbbnet']
