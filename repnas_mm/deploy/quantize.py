"""INT8 quantization of an ONNX model with ONNX Runtime, calibrated on
real images.

``quantize_static``: QDQ format, per-channel symmetric INT8 weights, UINT8
activations, ranges calibrated on real training images
(:func:`calibration_images`), pre-processed as at inference. The output
layers stay fp32 (:func:`output_layers`).
"""
import os
import os.path as osp
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .model import DeployError
from .options import CALIBRATION_METHODS

#: The operators quantized: the convolutions and matrix products, where the
#: time goes. The rest stays fp32: in particular a detector's post-processing
#: in the graph (CenterNet's 3x3 max-pool peak test and top-k on the heatmap
#: turn into ties and spurious peaks on 8-bit values).
OP_TYPES = ['Conv', 'ConvTranspose', 'Gemm', 'MatMul']
#: What ONNX Runtime is asked to quantize: :data:`OP_TYPES`, and the ReLUs,
#: so that it fuses each ReLU into the conv before it (the conv's output
#: quantized over the ReLU's range, the ReLU dropped): one quantization
#: step per conv instead of two (before and after the ReLU, the first
#: spending half its levels on negatives the ReLU zeroes), and no
#: fp32 round trip between the convs.
QUANTIZED_TYPES = OP_TYPES + ['Relu']


def calibration_images(cfg, num: int) -> List[str]:
    """``num`` image files of the config's training set, evenly spaced
    over it (deterministic; a class-sorted folder gives every class)."""
    from mmengine.registry import DATASETS, init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    try:
        dataset = DATASETS.build(cfg.train_dataloader.dataset)
        total = len(dataset)
    except (FileNotFoundError, OSError) as exc:
        raise DeployError(
            'INT8 calibration needs the config\'s training images, which are '
            f'absent ({exc}); point train_dataloader at them with '
            '--cfg-options') from None
    if total == 0:
        raise DeployError('the config\'s training set is empty: nothing to '
                          'calibrate INT8 on')
    picks = np.unique(np.linspace(0, total - 1, min(num, total)).astype(int))
    return [dataset.get_data_info(int(i))['img_path'] for i in picks]


def output_layers(model) -> List[str]:
    """Names of the :data:`OP_TYPES` nodes that no other one follows: the
    layers that compute the outputs (a classifier's logits, a detector's
    heatmap, sizes and offsets), kept fp32 as is usual in INT8 deployment:
    8-bit logits tie, and they cost little."""
    consumers = {}
    for node in model.graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)

    def followed(node, seen):
        for tensor in node.output:
            for nxt in consumers.get(tensor, []):
                if id(nxt) in seen:
                    continue
                seen.add(id(nxt))
                if nxt.op_type in OP_TYPES or followed(nxt, seen):
                    return True
        return False

    return [n.name for n in model.graph.node
            if n.op_type in OP_TYPES and not followed(n, set())]


class _Reader:
    """ONNX Runtime's CalibrationDataReader over preprocessed images, with
    the ``set_range`` that lets it collect ranges a chunk at a time."""

    def __init__(self, name: str, arrays: Sequence[np.ndarray]):
        self.name, self.arrays = name, list(arrays)
        self.set_range(0, len(self.arrays))

    def __len__(self):
        return len(self.arrays)

    def set_range(self, start_index: int, end_index: int):
        self._items = iter(self.arrays[start_index:end_index])

    def get_next(self):
        array = next(self._items, None)
        return None if array is None else {self.name: array}


def preprocess(fp32_path: str, folder: str,
               log: Callable[[str], None] = print) -> str:
    """ONNX Runtime's recommended step before quantizing (shape inference,
    graph optimisation: e.g. a Conv+BN pair becomes one Conv), written into
    ``folder``; its path, or ``fp32_path`` when ONNX Runtime cannot handle
    the graph (it is quantized as it is)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process
    pre = osp.join(folder, 'preprocessed.onnx')
    try:
        quant_pre_process(fp32_path, pre)
        return pre
    except Exception as exc:  # noqa: BLE001 (ORT raises many kinds)
        log(f'[deploy] INT8: ONNX Runtime\'s pre-processing failed ({exc}); '
            'quantizing the exported graph as it is')
        return fp32_path


def _quantize_static(source: str, out: str, inputs: Sequence[np.ndarray],
                     method: str, exclude: Sequence[str],
                     overrides: Optional[dict] = None,
                     only: Optional[Sequence[str]] = None):
    """ONNX Runtime's static quantization of the graph at ``source``.
    ``overrides``: given scales (``TensorQuantOverrides``; ONNX Runtime
    must then not nudge a weight's scale to suit its int32 bias);
    ``only``: quantize these nodes and no other."""
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    if method not in CALIBRATION_METHODS:
        raise DeployError(f'unknown calibration method {method!r}; methods '
                          f'are {", ".join(CALIBRATION_METHODS)}')
    calibrate = dict(minmax=CalibrationMethod.MinMax,
                     entropy=CalibrationMethod.Entropy,
                     percentile=CalibrationMethod.Percentile)[method]
    extra = {}
    if overrides is not None:
        extra = dict(TensorQuantOverrides=overrides,
                     QDQDisableWeightAdjustForInt32Bias=True)
    name = ort.InferenceSession(
        source, providers=['CPUExecutionProvider']).get_inputs()[0].name
    # Ranges are collected a chunk of images at a time, so memory does not
    # grow with the number of calibration images.
    chunk = next(s for s in range(min(16, len(inputs)), 0, -1)
                 if len(inputs) % s == 0)
    quantize_static(
        source,
        out,
        _Reader(name, inputs),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=calibrate,
        op_types_to_quantize=QUANTIZED_TYPES,
        nodes_to_quantize=list(only) if only is not None else None,
        nodes_to_exclude=list(exclude),
        extra_options=dict(CalibStridedMinMax=chunk, **extra))


def graph_values(path: str, names: Sequence[str],
                 example: np.ndarray) -> List[np.ndarray]:
    """The values of the named tensors of the ONNX model at ``path`` on
    ``example`` (its first input)."""
    import onnx
    import onnxruntime as ort
    model = onnx.load(path)
    outputs = {o.name for o in model.graph.output}
    for name in names:
        if name not in outputs:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=['CPUExecutionProvider'])
    return session.run(list(names), {session.get_inputs()[0].name: example})


def read_scales(path: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """``{tensor: (scale, zero_point)}`` of a QDQ model: every
    QuantizeLinear's input (activations) and every DequantizeLinear of an
    INT8 initializer (weights, per channel; the key is the float weight's
    name, ``<name>_quantized`` in the graph). Biases (INT32, their scale
    the input's times the weight's) are left out."""
    import onnx
    model = onnx.load(path)
    inits = {i.name: onnx.numpy_helper.to_array(i)
             for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type == 'QuantizeLinear':
            key = node.input[0]
        elif node.op_type == 'DequantizeLinear' and \
                inits.get(node.input[0], np.zeros(0, np.int32)).dtype == \
                np.int8:
            key = node.input[0].rsplit('_quantized', 1)[0]
        else:
            continue
        found[key] = (inits[node.input[1]], inits[node.input[2]])
    return found


def _activation_overrides(path: str) -> dict:
    """The activation scales of the QDQ model at ``path``, as overrides."""
    return {
        name: [dict(scale=scale.reshape(()), zero_point=zp.reshape(()))]
        for name, (scale, zp) in read_scales(path).items()
        if zp.dtype == np.uint8
    }


def sensitivity(source: str, inputs: Sequence[np.ndarray], method: str,
                overrides: Optional[dict] = None,
                images: int = 8) -> List[Tuple[str, float]]:
    """How much quantizing each layer alone costs: ``[(node, error)]``,
    most sensitive first.

    ``source``: the pre-processed fp32 graph. The activation ranges come
    from one calibration of the whole graph on ``inputs`` (or are the
    ``overrides`` given); then each quantized conv (with the ReLU it fuses)
    is quantized alone, and ``error`` is the squared error of the output
    layers' outputs relative to their energy, summed over the outputs and
    averaged over the first ``images`` inputs.
    """
    import onnx
    graph = onnx.load(source).graph
    outputs_of = set(output_layers(onnx.load(source)))
    heads = [n.output[0] for n in graph.node if n.name in outputs_of]
    relu_after = {n.input[0]: n.name for n in graph.node
                  if n.op_type == 'Relu'}
    layers = [n for n in graph.node
              if n.op_type in OP_TYPES and n.name not in outputs_of]
    probes = list(inputs)[:images]
    with tempfile.TemporaryDirectory() as tmp:
        one = osp.join(tmp, 'one.onnx')
        if overrides is None:
            _quantize_static(source, one, inputs, method, list(outputs_of))
            overrides = _activation_overrides(one)
        reference = [graph_values(source, heads, x) for x in probes]
        found = []
        for node in layers:
            only = [node.name] + ([relu_after[node.output[0]]]
                                  if node.output[0] in relu_after else [])
            _quantize_static(source, one, probes[:1], method, [],
                             overrides, only)
            error = 0.0
            for x, ref in zip(probes, reference):
                got = graph_values(one, heads, x)
                error += sum(float(((g - r)**2).sum()) /
                             max(float((r**2).sum()), 1e-12)
                             for g, r in zip(got, ref))
            found.append((node.name, error / len(probes)))
    return sorted(found, key=lambda item: -item[1])


def quantize(fp32_path: str,
             int8_path: str,
             inputs: Sequence[np.ndarray],
             method: str = 'minmax',
             log: Callable[[str], None] = print,
             trained: Optional[Callable[..., dict]] = None,
             fp32_layers: int = 0) -> dict:
    """Quantize ``fp32_path`` into ``int8_path`` (QDQ, per-channel weights),
    calibrated on ``inputs`` (the model's input tensors, batch 1).

    ``trained(graph_path, keep_fp32=...)``: instead of calibrating, the
    scales of a quantization-aware model (ONNX Runtime's
    ``TensorQuantOverrides`` for the graph at ``graph_path``:
    :func:`~.qat_export.trained_overrides`); the written model is checked
    to hold them. ``fp32_layers``: keep that many of the most sensitive
    layers (:func:`sensitivity`) unquantized, besides the output layers.
    Returns what was done: ``kept_fp32`` (node names), and with
    ``fp32_layers``, ``sensitivity`` (every layer's error).
    """
    import onnx
    folder = osp.dirname(int8_path)
    source = preprocess(fp32_path, folder, log)
    exclude = output_layers(onnx.load(source))
    overrides = trained(source, keep_fp32=()) if trained else None
    if trained is not None:
        inputs = list(inputs)[:1]  # nothing is calibrated
    report = dict(kept_fp32=[])
    if fp32_layers:
        log(f'[deploy] INT8: sensitivity pass (each layer quantized alone, '
            f'on {min(8, len(inputs))} image(s))')
        ranked = sensitivity(source, inputs, method, overrides)
        report = dict(kept_fp32=[name for name, _ in ranked[:fp32_layers]],
                      sensitivity=[dict(node=name, error=error)
                                   for name, error in ranked])
        log('[deploy] INT8: kept fp32: ' + ', '.join(
            f'{name} ({error:.2e})' for name, error in ranked[:fp32_layers]))
        exclude = exclude + report['kept_fp32']
        if overrides is not None:
            overrides = trained(source, keep_fp32=report['kept_fp32'])
    _quantize_static(source, int8_path, inputs, method, exclude, overrides)
    if source != fp32_path:
        os.remove(source)
    if overrides is not None:
        _check_trained(int8_path, overrides)
    # ONNX Runtime's tools stamp the model with every domain they know
    # (ai.onnx.ml opset 5, com.microsoft, ...); an older ONNX Runtime, such
    # as the one inside mmdeploy's SDK, refuses opsets newer than its own.
    # Keep the opsets the graph uses, at the fp32 export's versions.
    model, reference = onnx.load(int8_path), onnx.load(fp32_path)
    used = {node.domain for node in model.graph.node}
    known = {o.domain: o.version for o in reference.opset_import}
    kept = [
        onnx.helper.make_opsetid(o.domain, known.get(o.domain, o.version))
        for o in model.opset_import if o.domain in used or o.domain == ''
    ]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    model.ir_version = reference.ir_version
    onnx.checker.check_model(model)
    onnx.save(model, int8_path)
    return report


def _check_trained(path: str, overrides: dict):
    """Every scale of the quantized model at ``path`` is a trained one (a
    ReLU's input has none left when ONNX Runtime fused the ReLU away)."""
    for name, (scale, _) in read_scales(path).items():
        channels = overrides.get(name)
        want = None if channels is None else np.array(
            [c['scale'] for c in channels], np.float32)
        if want is None or scale.size != want.size or \
                not np.array_equal(scale.reshape(-1), want):
            raise DeployError(f'the INT8 model quantizes {name!r} with a '
                              'scale the quantization-aware model did not '
                              'train')


__all__ = [
    'OP_TYPES', 'QUANTIZED_TYPES', 'calibration_images', 'graph_values',
    'output_layers', 'preprocess', 'quantize', 'read_scales', 'sensitivity'
]
