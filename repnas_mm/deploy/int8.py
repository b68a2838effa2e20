"""INT8: ONNX Runtime static quantization of an mmdeploy SDK folder, evaluated.

The fp32 ``end2end.onnx`` that mmdeploy exported (``mmdeploy_export``) is
quantized by ONNX Runtime (``quantize_static``: QDQ format, per-channel
symmetric INT8 weights, UINT8 activations) with ranges calibrated on real
training images, pre-processed as at inference (the config's test
pipeline and data preprocessor). Both models are then evaluated on the
config's test set with the config's own metric (top-1 for
classifiers, CocoMetric bbox mAP for detectors) through mmdeploy's ONNX
Runtime backend model, and timed side by side in ONNX Runtime. The INT8
model goes into an SDK folder of its own (``int8/``: the fp32 folder's
``deploy.json``, ``pipeline.json``, ``detail.json`` and the INT8
``end2end.onnx``), checked in mmdeploy's SDK.
"""
import math
import os
import os.path as osp
import shutil
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch

from .model import DeployError

#: Calibration methods (ONNX Runtime's CalibrationMethod names).
CALIBRATION_METHODS = ('minmax', 'entropy', 'percentile')
#: The metric a config is judged by, per evaluator type: its key, the
#: factor to points, a label.
METRICS = dict(Accuracy=('accuracy/top1', 1.0, 'top-1 (%)'),
               CocoMetric=('coco/bbox_mAP', 100.0, 'bbox mAP (x100)'))
INT8_DIR = 'int8'
#: The operators quantized: the convolutions and matrix products, where the
#: time goes. The rest stays fp32: in particular a detector's post-processing
#: in the graph (CenterNet's 3x3 max-pool peak test and top-k on the heatmap
#: turn into ties and spurious peaks on 8-bit values).
OP_TYPES = ['Conv', 'ConvTranspose', 'Gemm', 'MatMul']


def _task(deploy_cfg: str, model_cfg: str):
    from mmdeploy.apis.utils import build_task_processor
    from mmdeploy.utils import load_config
    deploy, model = load_config(deploy_cfg, model_cfg)
    return build_task_processor(model, deploy, 'cpu'), deploy, model


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


def backend_model(task, onnx_path: str):
    """mmdeploy's ONNX Runtime backend model (with the config's data
    preprocessor) of an ONNX file."""
    return task.build_backend_model([onnx_path],
                                    task.update_data_preprocessor)


def model_input(task, backend, path: str) -> np.ndarray:
    """The tensor the ONNX model sees for an image file: the config's test
    pipeline, then the backend model's data preprocessor."""
    data = task.create_input(path)[0]
    with torch.no_grad():
        return backend.data_preprocessor(data, False)['inputs'].numpy()


def evaluate(task, model_cfg, backend, what: str,
             log: Callable[[str], None] = print):
    """(the config's test metrics, images) of an mmdeploy backend model,
    on the config's test set (``test_dataloader``, ``test_evaluator``): the
    split final numbers are reported on, as ``tools/test.py`` does."""
    from mmengine.evaluator import Evaluator
    from mmengine.registry import init_default_scope
    init_default_scope(model_cfg.get('default_scope', 'mmpretrain'))
    try:
        loader = task.build_dataloader(model_cfg.test_dataloader)
    except (FileNotFoundError, OSError) as exc:
        raise DeployError(
            f'INT8 evaluation needs the config\'s test set, which is '
            f'absent ({exc}); point test_dataloader at it with '
            '--cfg-options') from None
    evaluator = Evaluator(model_cfg.test_evaluator)
    evaluator.dataset_meta = loader.dataset.metainfo
    total, seen, shown = len(loader.dataset), 0, 0
    with torch.no_grad():
        for batch in loader:
            evaluator.process(data_samples=backend.test_step(batch),
                              data_batch=batch)
            seen += len(batch['data_samples'])
            if 4 * seen >= (shown + 1) * total:  # every quarter
                shown = 4 * seen // total
                log(f'[deploy] INT8: evaluating {what}: {seen}/{total} '
                    'images')
    return evaluator.evaluate(total), total


def judged_by(evaluator_cfg):
    """(key, factor to points, label) of the metric a config's evaluator
    judges by; DeployError for evaluators INT8 has no metric for."""
    cfgs = evaluator_cfg if isinstance(evaluator_cfg, (list, tuple)) else \
        [evaluator_cfg]
    for cfg in cfgs:
        kind = str(cfg.get('type', '')).split('.')[-1]
        if kind in METRICS:
            return METRICS[kind]
    raise DeployError(
        f'the config\'s test_evaluator ({[c.get("type") for c in cfgs]}) has '
        'no metric INT8 is judged by: top-1 (Accuracy) or bbox mAP '
        '(CocoMetric)')


def points(metrics: Dict[str, float], key: str, factor: float) -> float:
    """The metric in points. CocoMetric reports nothing at all when a model
    detected nothing: that is a mAP of 0."""
    if key not in metrics and key.startswith('coco/'):
        return 0.0
    return float(metrics[key]) * factor


def time_models(paths: Dict[str, str], example: np.ndarray,
                repeats: int = 10, iters: int = 3,
                min_seconds: float = 0.05) -> Dict[str, dict]:
    """Median latency of ONNX models in ONNX Runtime (CPU), timed
    round-robin on ``example``; and each one's speed-up over the first
    (the median of the per-repeat ratios). A repeat runs each model at
    least ``iters`` times and at least ``min_seconds`` long (the slowest
    model's), so a fast model is not timed on a handful of
    sub-millisecond calls."""
    import time
    import onnxruntime as ort

    from repnas_mm.benchmark import paired_speedup, time_round_robin
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    runs = {}
    for label, path in paths.items():
        session = ort.InferenceSession(
            path, options, providers=['CPUExecutionProvider'])
        feed = {session.get_inputs()[0].name: example}
        runs[label] = lambda s=session, f=feed: s.run(None, f)
    slowest = 0.0
    for run in runs.values():
        run()  # warm-up, then one timed call
        start = time.perf_counter()
        run()
        slowest = max(slowest, time.perf_counter() - start)
    iters = max(iters, math.ceil(min_seconds / max(slowest, 1e-6)))
    timings = time_round_robin(runs, example.shape[0], 'cpu', repeats, iters,
                               progress=False)
    first = timings[next(iter(paths))]
    return {
        label: dict(ms=1e3 * t.median,
                    images_per_second=t.images_per_second,
                    speedup=paired_speedup(t, first))
        for label, t in timings.items()
    }


def export_int8(deploy_cfg: str,
                model_cfg: str,
                sdk_dir: str,
                num_images: int = 256,
                method: str = 'minmax',
                tolerance: float = 1.0,
                sdk_images: Sequence[str] = (),
                log: Callable[[str], None] = print) -> dict:
    """Quantize the SDK folder ``sdk_dir`` into ``sdk_dir/int8``, evaluated.

    ``model_cfg`` is the fused model's deploy config. Raises
    :class:`DeployError` (and leaves ``sdk_dir/int8`` absent) when the
    INT8 model's metric is more than ``tolerance`` points below fp32's.
    Returns what was measured.
    """
    from mmengine.config import Config
    from .mmdeploy_export import SDK_FILES
    task, _, model = _task(deploy_cfg, model_cfg)
    key, factor, label = judged_by(model.test_evaluator)
    fp32 = osp.join(sdk_dir, SDK_FILES[0])
    backends = dict(fp32=backend_model(task, fp32))
    inputs = [
        model_input(task, backends['fp32'], path)
        for path in calibration_images(Config.fromfile(model_cfg),
                                       num_images)
    ]
    log(f'[deploy] INT8: calibrating on {len(inputs)} training image(s) '
        f'({method})')
    out = osp.join(sdk_dir, INT8_DIR)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    int8 = osp.join(out, SDK_FILES[0])
    try:
        quantize(fp32, int8, inputs, method, log)
        for name in SDK_FILES[1:]:
            shutil.copy(osp.join(sdk_dir, name), osp.join(out, name))
        backends['int8'] = backend_model(task, int8)
        metrics = {}
        for what, backend in backends.items():
            metrics[what], test_images = evaluate(task, model, backend,
                                                  what, log)
        fp32_value, int8_value = (points(metrics[what], key, factor)
                                  for what in ('fp32', 'int8'))
        drop = fp32_value - int8_value
        if drop > tolerance:
            raise DeployError(
                f'INT8 {label} {int8_value:.2f} is {drop:.2f} points below '
                f'fp32 {fp32_value:.2f} (--int8-tolerance {tolerance:g}); '
                'nothing was written')
        latency = time_models(dict(fp32=fp32, int8=int8), inputs[0])
        sdk_gap = _sdk_gap(deploy_cfg, model_cfg, out, sdk_images)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    result = dict(
        sdk_dir=out,
        onnx=int8,
        metric=key,
        metric_label=label,
        fp32=fp32_value,
        int8=int8_value,
        drop=drop,
        tolerance=tolerance if math.isfinite(tolerance) else None,
        calibration=dict(method=method, images=len(inputs)),
        latency=latency,
        speedup=latency['int8']['speedup'],
        sdk_error=sdk_gap,
        test_images=test_images)
    log('[deploy] INT8\n' + table(result))
    return result


def _sdk_gap(deploy_cfg, model_cfg, sdk_dir, images) -> float:
    """mmdeploy's SDK on the INT8 folder against ONNX Runtime on the same
    INT8 model (:func:`~.mmdeploy_export.compare`'s gap: 1.0 for another
    top-1 class). Reported, not bounded: the SDK ships its own, older ONNX
    Runtime (1.15), which computes INT8 with other kernels (class scores up
    to 0.09 apart, same top-1, were seen)."""
    if not images:
        return 0.0
    from .mmdeploy_export import compare
    return compare(deploy_cfg, model_cfg, None, sdk_dir, images)['sdk']


def table(result: dict) -> str:
    """The INT8 result as a Markdown table."""
    from repnas_mm.benchmark import markdown_table
    lat = result['latency']
    rows = [[
        what, f'{result[what]:.2f}', f'{lat[what]["ms"]:.2f}',
        f'{lat[what]["images_per_second"]:.1f}', f'{lat[what]["speedup"]:.2f}x'
    ] for what in ('fp32', 'int8')]
    cal = result['calibration']
    return (markdown_table(
        ['model', result['metric_label'], 'ms / image (ORT)', 'images / s',
         'speed vs fp32'], rows) +
        f'\n\nINT8 drop {result["drop"]:.2f} points (tolerance '
        f'{result["tolerance"]}); calibration: {cal["method"]} on '
        f'{cal["images"]} training images; ONNX Runtime CPU, '
        f'{torch.get_num_threads()} threads, batch 1, median of round-robin '
        'repeats (speed: of the per-repeat ratios).\n')


__all__ = ['CALIBRATION_METHODS', 'calibration_images', 'evaluate',
           'export_int8', 'judged_by', 'quantize', 'table', 'time_models']
