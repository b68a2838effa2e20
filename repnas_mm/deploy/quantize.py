"""INT8 quantization of an ONNX model with ONNX Runtime, calibrated on
real images.

``quantize_static``: QDQ format, per-channel symmetric INT8 weights, UINT8
activations, ranges calibrated on real training images
(:func:`calibration_images`), pre-processed as at inference. The output
layers stay fp32 (:func:`output_layers`).
"""
import os
import os.path as osp
from typing import Callable, List, Sequence

import numpy as np

from .model import DeployError
from .options import CALIBRATION_METHODS

#: The operators quantized: the convolutions and matrix products, where the
#: time goes. The rest stays fp32: in particular a detector's post-processing
#: in the graph (CenterNet's 3x3 max-pool peak test and top-k on the heatmap
#: turn into ties and spurious peaks on 8-bit values).
OP_TYPES = ['Conv', 'ConvTranspose', 'Gemm', 'MatMul']


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


def quantize(fp32_path: str, int8_path: str, inputs: Sequence[np.ndarray],
             method: str = 'minmax', log: Callable[[str], None] = print):
    """Quantize ``fp32_path`` into ``int8_path`` (QDQ, per-channel weights),
    calibrated on ``inputs`` (the model's input tensors, batch 1)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    if method not in CALIBRATION_METHODS:
        raise DeployError(f'unknown calibration method {method!r}; methods '
                          f'are {", ".join(CALIBRATION_METHODS)}')
    calibrate = dict(minmax=CalibrationMethod.MinMax,
                     entropy=CalibrationMethod.Entropy,
                     percentile=CalibrationMethod.Percentile)[method]
    folder = osp.dirname(int8_path)
    pre = osp.join(folder, 'preprocessed.onnx')
    # ONNX Runtime's recommended step first (shape inference, graph
    # optimisation); a graph it cannot handle is quantized as it is.
    try:
        quant_pre_process(fp32_path, pre)
        source = pre
    except Exception as exc:  # noqa: BLE001 (ORT raises many kinds)
        log(f'[deploy] INT8: ONNX Runtime\'s pre-processing failed ({exc}); '
            'quantizing the exported graph as it is')
        source = fp32_path
    exclude = output_layers(onnx.load(source))
    name = ort.InferenceSession(
        source, providers=['CPUExecutionProvider']).get_inputs()[0].name
    # Ranges are collected a chunk of images at a time, so memory does not
    # grow with the number of calibration images.
    chunk = next(s for s in range(min(16, len(inputs)), 0, -1)
                 if len(inputs) % s == 0)
    quantize_static(
        source,
        int8_path,
        _Reader(name, inputs),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=calibrate,
        op_types_to_quantize=OP_TYPES,
        nodes_to_exclude=exclude,
        extra_options=dict(CalibStridedMinMax=chunk))
    if osp.exists(pre):
        os.remove(pre)
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


__all__ = ['OP_TYPES', 'calibration_images', 'output_layers', 'quantize']
