"""The scales a quantization-aware model trained, for ONNX Runtime.

mmdeploy exports the fused QAT model as an fp32 graph (it builds the fp32
model from the config; the quantizers' tensors are not its). ONNX Runtime's
static quantization then writes the QDQ model, and
:func:`trained_overrides` tells it every scale and zero point
(``TensorQuantOverrides``) instead of letting it calibrate:

- an activation tensor of the graph gets the range of the quantizer whose
  input it is: the graph is run in ONNX Runtime and the model in PyTorch,
  fp32, on one image, and each tensor ONNX Runtime will quantize is matched
  to the quantizer that saw the same values (names differ, and graph
  optimisation folds and renames; values do not);
- a weight gets the per-channel scales its layer trained with, matched the
  same way (the layer's equivalent kernel against the graph's initializer).

A tensor ONNX Runtime would quantize that no quantizer matches is an error:
the QAT model did not train for it. :func:`read_scales` reads the scales
back from a QDQ model (what the export checks, and the tests compare).
"""
from typing import Dict, List, Tuple

import numpy as np
import torch

from repnas_mm.rep.quant import (act_quantizers, quantized_layers,
                                 set_quantization)
from .model import DeployError
from .quantize import (QUANTIZED_TYPES, graph_values, output_layers,
                       read_scales)

#: Largest relative difference (``max|a - b| / max|a|``) between a graph
#: tensor and the PyTorch tensor it is matched to.
MATCH_RTOL = 1e-3


def is_quantization_aware(model) -> bool:
    """Whether ``model`` has trained (calibrated) quantizers."""
    quantizers = act_quantizers(model)
    return bool(quantizers) and all(bool(q.calibrated) for q in quantizers)


def quantized_tensors(graph, keep_fp32=()) -> Tuple[List[str], List[tuple],
                                                   Dict[str, str]]:
    """What ONNX Runtime quantizes in ``graph`` (an ``onnx.ModelProto``):
    (activation tensor names, [(weight name, axis)], {ReLU input: its
    output}), each once, in graph order. A ReLU's input is quantized with
    its output's scale (ONNX Runtime fuses the two)."""
    exclude = set(output_layers(graph)) | set(keep_fp32)
    inits = {i.name for i in graph.graph.initializer}
    acts, weights, relus = [], [], {}
    for node in graph.graph.node:
        if node.op_type not in QUANTIZED_TYPES or node.name in exclude:
            continue
        if node.op_type == 'Relu':
            relus[node.input[0]] = node.output[0]
        for name in (node.input[0], node.output[0]):
            if name not in inits and name not in acts:
                acts.append(name)
        if node.op_type in ('Conv', 'ConvTranspose') and \
                node.input[1] in inits:
            weights.append((node.input[1],
                            1 if node.op_type == 'ConvTranspose' else 0))
    return acts, weights, relus


@torch.no_grad()
def _quantizer_inputs(model, example: np.ndarray) -> list:
    """[(quantizer, what it saw)] on ``example``, the model in fp32."""
    quantizers = act_quantizers(model)
    for q in quantizers:
        q.record = []
    set_quantization(model, False)
    try:
        model.eval()
        model(torch.from_numpy(example), mode='tensor')
    finally:
        set_quantization(model, True)
        seen = [(q, q.record) for q in quantizers]
        for q in quantizers:
            q.record = None
    return [(q, t[0].numpy()) for q, t in seen if t]


def _closest(value: np.ndarray, candidates):
    """(candidate, relative error) of the closest same-sized candidate."""
    best, error = None, float('inf')
    scale = max(float(np.abs(value).max()), 1e-12)
    for item, other in candidates:
        if other.size != value.size:
            continue
        err = float(np.abs(other.reshape(value.shape) - value).max()) / scale
        if err < error:
            best, error = item, err
    return best, error


def trained_overrides(model, graph_path: str, example: np.ndarray,
                      keep_fp32=()) -> dict:
    """ONNX Runtime's ``TensorQuantOverrides`` for the graph at
    ``graph_path`` (the fp32 export, pre-processed as it will be
    quantized): the trained scale and zero point of every tensor it
    quantizes. ``example`` is one model input (batch 1)."""
    import onnx
    graph = onnx.load(graph_path)
    acts, weights, relus = quantized_tensors(graph, keep_fp32)
    matched = [a for a in acts if a not in relus]
    values = dict(zip(matched, graph_values(graph_path, matched, example)))
    seen = _quantizer_inputs(model, example)
    overrides, unmatched = {}, []
    for name in matched:
        quantizer, error = _closest(values[name], seen)
        if quantizer is None or error > MATCH_RTOL:
            unmatched.append(name)
            continue
        scale, zero_point = quantizer.scale_zero_point()
        overrides[name] = [dict(scale=np.array(scale, np.float32),
                                zero_point=np.array(zero_point, np.uint8))]
    for before, after in relus.items():
        if after in overrides:
            overrides[before] = overrides[after]
    layers = [(layer, layer.quant.kernel_bias(layer)[0].detach().numpy())
              for layer in quantized_layers(model).values()]
    inits = {i.name: onnx.numpy_helper.to_array(i)
             for i in graph.graph.initializer}
    for name, axis in weights:
        kernel = inits[name]
        layer, error = _closest(
            kernel, [(m, k) for m, k in layers if k.shape == kernel.shape])
        if layer is None or error > MATCH_RTOL or layer.quant.axis != axis:
            unmatched.append(name)
            continue
        scales = layer.quant.weight_scale(layer).numpy().astype(np.float32)
        overrides[name] = [
            dict(scale=np.array(s, np.float32),
                 zero_point=np.array(0, np.int8),
                 **({'axis': axis} if i == 0 else {}))
            for i, s in enumerate(scales)
        ]
    if unmatched:
        raise DeployError(
            f'{len(unmatched)} tensor(s) that ONNX Runtime quantizes have no '
            f'trained scale in the quantization-aware model, e.g. '
            f'{unmatched[0]!r} (is the checkpoint of this config?)')
    return overrides


__all__ = ['MATCH_RTOL', 'is_quantization_aware', 'quantized_tensors',
           'read_scales', 'trained_overrides']
