"""Quantization-aware training on the equivalent kernel (RepQ, BMVC'23).

INT8 inference runs one quantized KxK conv per block; a re-parameterized
block trains as several branches. RepQ's remedy, here: during QAT each
quantized layer computes with its *equivalent* kernel (an ODBB's composed
``kernel_bias()``, a conv with the BN after it folded in, as the fused
deploy network has them), fake-quantized per output channel, and the
activations are fake-quantized where ONNX Runtime's static quantization
puts its QuantizeLinear/DequantizeLinear pairs: at the input and at the
output of every quantized conv, except the layers that compute the model's
outputs (the deploy step keeps those fp32).

The numbers are ONNX Runtime's, so that an exported model computes what QAT
trained:

- weights: symmetric INT8 in ``[-127, 127]``, one scale per output channel,
  ``max|W_c| / 127`` of the current equivalent kernel;
- activations: asymmetric UINT8 over a range ``[lo, hi]`` that contains 0,
  ``scale = (hi - lo) / 255``, ``zero_point = round(-lo / scale)``. The
  range is calibrated (min/max over a few batches), then learned (LSQ+:
  straight-through rounding, gradients to ``lo``/``hi`` scaled by
  ``1 / sqrt(n * 255)``).

The BNs are used as the deploy network sees them: with their running
statistics, which QAT does not change (a folded BN and an ODBB's branch BNs
never run their own forward); their affine parameters train.

Pure PyTorch; the placement is found by one probing forward pass
(:func:`prepare_qat`), so any CNN built from ``Conv2d``, ``ConvTranspose2d``
and ODBBs works without naming its layers.
"""
import functools
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .block import ODBB
from .branches import fuse_conv_bn
from .transforms import KernelBias

#: Symmetric INT8 weights: ``[-127, 127]`` (ONNX Runtime's symmetric range).
WEIGHT_QMAX = 127
#: UINT8 activations: ``[0, 255]``.
ACT_QMAX = 255


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` forward, identity backward (straight-through)."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: Tensor, factor: float) -> Tensor:
    """``x`` forward; its gradient multiplied by ``factor`` (LSQ)."""
    return x * factor + (x - x * factor).detach()


def _along(t: Tensor, axis: int, ndim: int) -> Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


def weight_scale(kernel: Tensor, axis: int = 0) -> Tensor:
    """Per-channel scales of symmetric INT8 weights: ``max|W_c| / 127``
    along ``axis`` (1 for an all-zero channel). Not differentiated."""
    dims = [d for d in range(kernel.dim()) if d != axis]
    absmax = kernel.detach().abs().amax(dim=dims)
    return torch.where(absmax > 0, absmax / WEIGHT_QMAX,
                       torch.ones_like(absmax))


def fake_quant_weight(kernel: Tensor, axis: int = 0,
                      scale: Optional[Tensor] = None) -> Tensor:
    """``kernel`` quantized to INT8 per channel and back (straight-through
    gradient to ``kernel``)."""
    scale = _along(weight_scale(kernel, axis) if scale is None else scale,
                   axis, kernel.dim())
    q = round_ste(kernel / scale)
    # Within +-127 by construction; the clamp only absorbs float error (so
    # the largest tap of a channel keeps its gradient too).
    q = q + (q.clamp(-WEIGHT_QMAX, WEIGHT_QMAX) - q).detach()
    return q * scale


def act_scale_zero_point(lo: Tensor, hi: Tensor) -> Tuple[Tensor, Tensor]:
    """ONNX Runtime's UINT8 ``(scale, zero_point)`` of a range: widened to
    contain 0, ``scale = (hi - lo) / 255``, ``zp = round(-lo / scale)``."""
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / ACT_QMAX, min=1e-8)
    return scale, torch.clamp(round_ste(-lo / scale), 0, ACT_QMAX)


class ActQuant(nn.Module):
    """UINT8 fake quantization of one activation tensor, over a learned
    range ``[lo, hi]``.

    It computes nothing until calibrated (``calibrated`` is saved with the
    weights, so a resumed or deployed QAT model is quantized at once).
    ``observing``: pass ``x`` through and widen ``[lo, hi]`` to its min and
    max (calibration). ``enabled=False``: pass through (the fp32 model).
    ``record``: a list that gets a copy of each input (what the deploy
    step matches against the exported graph).
    """

    def __init__(self):
        super().__init__()
        self.lo = nn.Parameter(torch.tensor(0.0))
        self.hi = nn.Parameter(torch.tensor(1.0))
        self.register_buffer('calibrated', torch.tensor(False))
        self.observing = False
        self.enabled = True
        self.record: Optional[List[Tensor]] = None
        self._seen = 0

    def scale_zero_point(self) -> Tuple[float, int]:
        """The exported ``(scale, zero_point)``."""
        with torch.no_grad():
            scale, zp = act_scale_zero_point(self.lo, self.hi)
        return float(scale), int(zp)

    @torch.no_grad()
    def _observe(self, x: Tensor):
        lo, hi = x.min(), x.max()
        if self._seen:
            lo, hi = torch.minimum(lo, self.lo), torch.maximum(hi, self.hi)
        self.lo.copy_(lo)
        self.hi.copy_(hi)
        self._seen += 1

    def end_calibration(self):
        """Stop observing; quantize from now on (if anything was seen)."""
        self.observing = False
        if self._seen:
            self.calibrated.fill_(True)
        self._seen = 0

    def forward(self, x: Tensor) -> Tensor:
        if self.record is not None:
            self.record.append(x.detach().clone())
        if self.observing:
            self._observe(x)
            return x
        if not (self.enabled and bool(self.calibrated)):
            return x
        g = 1.0 / math.sqrt(max(x[0].numel(), 1) * ACT_QMAX)
        scale, zp = act_scale_zero_point(grad_scale(self.lo, g),
                                         grad_scale(self.hi, g))
        q = torch.clamp(round_ste(x / scale) + zp, 0, ACT_QMAX)
        return (q - zp) * scale

    def extra_repr(self):
        scale, zp = self.scale_zero_point()
        return (f'calibrated={bool(self.calibrated)}, scale={scale:.4g}, '
                f'zero_point={zp}')


class LayerQuant(nn.Module):
    """What makes one layer (an ODBB, a ``Conv2d``, a ``ConvTranspose2d``)
    quantization-aware: it runs the layer as ``act_out(conv(act_in(x),
    fq(K), b))``, ``(K, b)`` the layer's equivalent kernel with the BN that
    follows it (``bn``, bypassed) folded in; ``relu``: ``act_out(relu(...))``
    (the ReLU after the layer, fused as ONNX Runtime fuses it).

    ``act_in``/``act_out`` may be shared with other layers: one quantizer
    per tensor, as the exported graph has one QuantizeLinear per tensor. A
    shared one is a child of the first layer that uses it only (``owns``),
    so it is saved, and given to an optimizer, once.
    ``enabled=False``: the fp32 model (still with ``bn`` folded, which is
    what the deploy network computes).
    """

    def __init__(self, layer: nn.Module, act_in: Optional[ActQuant],
                 act_out: Optional[ActQuant],
                 bn: Optional[nn.Module] = None,
                 owns: Tuple[bool, bool] = (True, True),
                 relu: bool = False):
        super().__init__()
        self.relu = relu
        for name, q, own in zip(('act_in', 'act_out'), (act_in, act_out),
                                owns):
            if own or q is None:
                setattr(self, name, q)
            else:  # another layer's child
                object.__setattr__(self, name, q)
        #: The axis of the output channels of the layer's kernel.
        self.axis = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
        if bn is not None and self.axis == 1 and layer.groups != 1:
            raise ValueError('folding a BN into a grouped ConvTranspose2d is '
                             'not supported')
        object.__setattr__(self, 'bn', bn)  # not a child: the model owns it
        self.enabled = True

    def kernel_bias(self, layer: nn.Module) -> KernelBias:
        """The layer's equivalent ``(kernel, bias)`` (differentiable), BN
        folded in; not quantized."""
        if isinstance(layer, ODBB):
            kernel, bias = layer.kernel_bias()
        else:
            kernel, bias = layer.weight, layer.bias
        if self.bn is not None:
            kernel, bias = fuse_conv_bn(kernel, self.bn, bias, self.axis)
        return kernel, bias

    def quantized_kernel(self, layer: nn.Module) -> KernelBias:
        """What the layer computes with: the kernel fake-quantized."""
        kernel, bias = self.kernel_bias(layer)
        if self.enabled:
            kernel = fake_quant_weight(kernel, self.axis)
        return kernel, bias

    def weight_scale(self, layer: nn.Module) -> Tensor:
        """The per-channel weight scales the layer quantizes with."""
        with torch.no_grad():
            return weight_scale(self.kernel_bias(layer)[0], self.axis)

    def forward(self, layer: nn.Module, x: Tensor) -> Tensor:
        if self.act_in is not None:
            x = self.act_in(x)
        kernel, bias = self.quantized_kernel(layer)
        y = _run_conv(layer, x, kernel, bias)
        if self.relu:  # the model's ReLU that follows is then a no-op
            y = F.relu(y)
        return y if self.act_out is None else self.act_out(y)


def _run_conv(layer: nn.Module, x: Tensor, kernel: Tensor,
              bias: Optional[Tensor]) -> Tensor:
    if isinstance(layer, nn.ConvTranspose2d):
        return F.conv_transpose2d(x, kernel, bias, layer.stride,
                                  layer.padding, layer.output_padding,
                                  layer.groups, layer.dilation)
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, kernel, bias)
    return F.conv2d(x, kernel, bias, layer.stride, layer.kernel_size // 2,
                    1, layer.groups)  # an ODBB


def _quant_forward(layer: nn.Module, x: Tensor) -> Tensor:
    return layer.quant(layer, x)


def is_quantizer_key(key: str) -> bool:
    """Whether a state-dict key is a quantizer's (absent from an fp32
    checkpoint, which loads into a quantization-aware model all the
    same)."""
    return any(f'.quant.{q}.' in '.' + key for q in ('act_in', 'act_out'))


def _bypassed(x: Tensor) -> Tensor:
    return x


# -- placement: one probing forward pass --------------------------------------

QUANTIZABLE = (ODBB, nn.Conv2d, nn.ConvTranspose2d)
#: Layers ONNX Runtime would quantize too (Gemm/MatMul): they decide which
#: convs are output layers, and are themselves kept fp32 (output layers, in
#: every model here). One that is not an output layer is refused.
MATRIX = (nn.Linear, )
#: The torch functions that are a ReLU (``nn.ReLU`` calls ``F.relu``).
RELU_OPS = ('relu', 'relu_')


class _Flow(TorchFunctionMode):
    """Records, for every torch function called, which tensors came from
    which: tensor identities are ``(id, version)``, so an in-place op makes
    a new one. Keeps every tensor alive, so that ids are not reused."""

    def __init__(self):
        super().__init__()
        self.parents: Dict[tuple, set] = {}
        self.ops: Dict[tuple, str] = {}
        self.alive: List[Tensor] = []

    @staticmethod
    def key(t: Tensor) -> tuple:
        return id(t), t._version

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [self.key(t) for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, Tensor)]
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                self.alive.append(t)
                self.ops[self.key(t)] = getattr(func, '__name__', '')
                self.parents.setdefault(self.key(t), set()).update(
                    k for k in inputs if k != self.key(t))
        return out


def _inside_odbb(model: nn.Module) -> set:
    """Names of the modules that an ODBB contains (its branches, its fused
    conv): the block is the layer, they are not."""
    inside = set()
    for name, module in model.named_modules():
        if isinstance(module, ODBB):
            inside.update(f'{name}.{sub}' for sub, _ in
                          module.named_modules() if sub)
    return inside


def plan(model: nn.Module, run: Callable[[nn.Module], Any]) -> List[dict]:
    """Where the quantizers go, found by running ``run(model)`` once (eval
    mode, no gradients).

    Returns one entry per quantized layer, in execution order:
    ``name``, ``input`` and ``output`` (tensor keys: equal keys are one
    tensor), ``bn`` (the name of the BN that follows it, folded, or None),
    ``relu`` (whether a ReLU, and nothing else, takes its output: the
    output is then quantized after the ReLU, as ONNX Runtime does when it
    fuses the two). Output layers (no quantizable layer downstream) are
    left out.
    """
    inside = _inside_odbb(model)
    layers = {
        name: m for name, m in model.named_modules()
        if isinstance(m, QUANTIZABLE + MATRIX) and name not in inside
    }
    norms = {
        name: m for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and
        name not in inside
    }
    seen: Dict[str, dict] = {}
    flow = _Flow()

    def enter(name, module, args):
        if name not in seen and args and isinstance(args[0], Tensor):
            seen[name] = dict(name=name, input=flow.key(args[0]),
                              order=len(seen))

    def leave(name, module, args, output):
        if name in seen and isinstance(output, Tensor):
            seen[name]['output'] = flow.key(output)

    # In-place activations would make a layer's output and the next one's
    # input the same tensor object; the versions tell them apart, but only
    # if they are not in place at all in the probe, which is simplest.
    inplace = [m for m in model.modules() if getattr(m, 'inplace', False)]
    handles = []
    for name, module in {**layers, **norms}.items():
        handles.append(module.register_forward_pre_hook(
            functools.partial(enter, name)))
        handles.append(module.register_forward_hook(
            functools.partial(leave, name)))
    was_training = model.training
    try:
        for m in inplace:
            m.inplace = False
        model.eval()
        with torch.no_grad(), flow:
            run(model)
    finally:
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True
        model.train(was_training)

    entries = sorted((e for e in seen.values() if 'output' in e),
                     key=lambda e: e['order'])
    bn_of_input = {e['input']: e for e in entries if e['name'] in norms}
    children: Dict[tuple, List[tuple]] = {}
    for child, parents in flow.parents.items():
        for parent in parents:
            children.setdefault(parent, []).append(child)
    layer_inputs = {}
    for e in entries:
        if e['name'] in layers:
            layer_inputs.setdefault(e['input'], []).append(e['name'])

    def downstream(start: tuple, me: str) -> bool:
        stack, visited = [start], {start}
        while stack:
            key = stack.pop()
            if any(n != me for n in layer_inputs.get(key, ())):
                return True
            for nxt in children.get(key, ()):
                if nxt not in visited:
                    visited.add(nxt)
                    stack.append(nxt)
        return False

    planned = []
    for e in entries:
        if e['name'] not in layers:
            continue
        bn = bn_of_input.get(e['output'])
        output = bn['output'] if bn is not None else e['output']
        after = children.get(output, [])
        relu = len(after) == 1 and flow.ops.get(after[0]) in RELU_OPS
        if relu:
            output = after[0]
        if not downstream(output, e['name']):
            continue  # an output layer: fp32
        if isinstance(layers[e['name']], MATRIX):
            raise ValueError(
                f'{e["name"]} is a Linear layer inside the network (not an '
                'output layer); quantization-aware training supports convs '
                'there only')
        planned.append(dict(name=e['name'], input=e['input'], output=output,
                            bn=bn['name'] if bn is not None else None,
                            relu=relu))
    return planned


def prepare_qat(model: nn.Module,
                run: Callable[[nn.Module], Any]) -> List[str]:
    """Make ``model`` quantization-aware, in place; the names of the layers
    it quantizes, in execution order.

    ``run(model)`` runs one forward pass on an example input (any size the
    model takes: the placement does not depend on it). Each quantized layer
    gets a ``quant`` (:class:`LayerQuant`) and runs through it; a BN that
    follows a quantized conv is folded into it and bypassed. The module
    tree and the weights' names do not change, so a trained fp32
    checkpoint loads as it is (the quantizers' tensors are new), and the
    deploy step fuses and exports the model as before.
    """
    if any(isinstance(getattr(m, 'quant', None), LayerQuant)
           for m in model.modules()):
        raise ValueError('the model is quantization-aware already')
    planned = plan(model, run)
    modules = dict(model.named_modules())
    quantizers: Dict[tuple, ActQuant] = {}

    def quantizer(key) -> Tuple[ActQuant, bool]:
        """The tensor's quantizer, and whether it is new (owned)."""
        new = key not in quantizers
        if new:
            quantizers[key] = ActQuant()
        return quantizers[key], new

    for entry in planned:
        layer = modules[entry['name']]
        bn = modules[entry['bn']] if entry['bn'] else None
        (act_in, own_in), (act_out, own_out) = (quantizer(entry['input']),
                                                quantizer(entry['output']))
        layer.quant = LayerQuant(layer, act_in, act_out, bn,
                                 (own_in, own_out), entry['relu'])
        layer.forward = functools.partial(_quant_forward, layer)
        if bn is not None:
            bn.forward = _bypassed
    return [e['name'] for e in planned]


def strip_quantization(model: nn.Module) -> nn.Module:
    """Undo :func:`prepare_qat` in place: every layer and folded BN runs
    its own forward again, the quantizers are gone (the fp32 model, as
    deployed before quantization); returned."""
    for layer in quantized_layers(model).values():
        bn = layer.quant.bn
        if bn is not None and 'forward' in vars(bn):
            del bn.forward
        del layer.quant
        del layer.forward
    return model


def quantized_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """The quantization-aware layers of ``model`` by name."""
    return {
        name: m for name, m in model.named_modules()
        if isinstance(getattr(m, 'quant', None), LayerQuant)
    }


def act_quantizers(model: nn.Module) -> List[ActQuant]:
    """Every activation quantizer once, in the order the layers run."""
    found = []
    for layer in quantized_layers(model).values():
        for q in (layer.quant.act_in, layer.quant.act_out):
            if q is not None and all(q is not f for f in found):
                found.append(q)
    return found


def set_quantization(model: nn.Module, enabled: bool):
    """Fake quantization on, or off (the fp32 model, BNs still folded)."""
    for layer in quantized_layers(model).values():
        layer.quant.enabled = enabled
    for q in act_quantizers(model):
        q.enabled = enabled


@torch.no_grad()
def calibrate(model: nn.Module, batches, run: Callable[[nn.Module, Any],
                                                        Any]) -> int:
    """Set every activation range to the min/max seen on ``batches``
    (``run(model, batch)`` runs one; eval mode, weights not quantized while
    observing); returns the number of batches."""
    quantizers = act_quantizers(model)
    layers = quantized_layers(model).values()
    for q in quantizers:
        q.observing = True
    for layer in layers:
        layer.quant.enabled = False
    was_training = model.training
    model.eval()
    count = 0
    try:
        for batch in batches:
            run(model, batch)
            count += 1
    finally:
        model.train(was_training)
        for layer in layers:
            layer.quant.enabled = True
        for q in quantizers:
            q.end_calibration()
    return count


__all__ = [
    'ACT_QMAX', 'WEIGHT_QMAX', 'ActQuant', 'LayerQuant', 'act_quantizers',
    'act_scale_zero_point', 'calibrate', 'fake_quant_weight',
    'is_quantizer_key', 'plan', 'prepare_qat', 'quantized_layers',
    'set_quantization', 'strip_quantization', 'weight_scale'
]
