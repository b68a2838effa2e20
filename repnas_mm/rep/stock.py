"""The stock Conv+BN pair a converted ODBB stands for, and the way back.

:func:`~.convert.convert_to_odbb` leaves in the BN's place what the model
still needs there (nothing: an ``nn.Identity``; or the activation of a
norm-act module: a :class:`NormTail`), and records on the block where the
BN was. :func:`restore_conv_bn` puts the pair back after fusion, so a fused
model has its stock layout and state dict. Pure PyTorch.
"""
import torch
import torch.nn as nn

from .block import ODBB


class NormTail(nn.Module):
    """What a norm-with-activation module applies after normalizing.

    timm's ``BatchNormAct2d`` is a BatchNorm subclass whose forward is BN,
    then ``drop``, then ``act``. In a block every branch must end in a
    *linear* BN, so the conversion gives the branches plain BNs and leaves
    ``drop`` and ``act`` here, in the old norm's place, after the block.
    """

    def __init__(self, drop: nn.Module, act: nn.Module):
        super().__init__()
        self.drop = drop
        self.act = act

    def forward(self, x):
        return self.act(self.drop(x))


def restore_conv_bn(model: nn.Module) -> int:
    """Turn fused converted ODBBs back into a ``Conv2d`` + BN pair.

    The conv holds the fused kernel (and a zero bias if the stock conv had
    one); the model's own norm module comes back to its own place, which
    may be under another parent than the conv's (mean 0, var 1, weight
    ``sqrt(1 + eps)``, adding the fused bias), with its activation again
    inside when it had one. A block whose norm's place lies outside
    ``model`` (a part of a converted model fused alone) stays a fused
    block, which computes the same. Returns how many were restored.
    """
    inside = {id(m) for m in model.modules()}
    restored = 0
    for parent in list(model.modules()):
        for attr, child in list(parent.named_children()):
            pair = getattr(child, 'stock_pair', None)
            if not isinstance(child, ODBB) or pair is None or \
                    child.fused_conv is None or \
                    id(pair['bn_parent']) not in inside:
                continue
            fused = child.fused_conv
            conv = nn.Conv2d(child.in_channels, child.out_channels,
                             child.kernel_size, child.stride,
                             child.kernel_size // 2, groups=child.groups,
                             bias=pair['conv_bias']).to(fused.weight)
            bn = pair['norm'].to(fused.weight)
            tail = getattr(pair['bn_parent'], pair['bn_name'])
            if isinstance(tail, NormTail):
                bn.drop, bn.act = tail.drop, tail.act
            with torch.no_grad():
                conv.weight.copy_(fused.weight)
                if conv.bias is not None:
                    conv.bias.zero_()
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0)
                bn.weight.fill_((1.0 + bn.eps)**0.5)
                bn.bias.copy_(fused.bias)
            bn.train(child.training)
            conv.train(child.training)
            setattr(parent, attr, conv)
            setattr(pair['bn_parent'], pair['bn_name'], bn)
            restored += 1
    return restored


__all__ = ['NormTail', 'restore_conv_bn']
