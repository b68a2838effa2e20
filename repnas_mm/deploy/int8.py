"""INT8: ONNX Runtime static quantization of an mmdeploy SDK folder, evaluated.

The steps, each a module of its own: the fp32 ``end2end.onnx`` that
mmdeploy exported (``mmdeploy_export``) is quantized (:mod:`.quantize`:
ranges calibrated on real training images, pre-processed as at inference);
both models are evaluated on the config's test set with the config's own
metric (:mod:`.evaluation`: top-1 for classifiers, CocoMetric bbox mAP for
detectors); and both are timed side by side in ONNX Runtime
(:func:`time_models`). The INT8 model goes into an SDK folder of its own
(``int8/``: the fp32 folder's ``deploy.json``, ``pipeline.json``,
``detail.json`` and the INT8 ``end2end.onnx``), checked in mmdeploy's SDK.
"""
import functools
import math
import os
import os.path as osp
import shutil
from typing import Callable, Dict, Sequence

import numpy as np
import torch

from .evaluation import (backend_model, evaluate, judged_by, model_input,
                         points, task_processor)
from .model import DeployError
from .quantize import calibration_images, quantize

INT8_DIR = 'int8'
#: ``calibration.method`` of an INT8 model with a QAT model's scales.
QAT_METHOD = 'trained (QAT)'


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
                log: Callable[[str], None] = print,
                qat_model=None,
                fp32_layers: int = 0) -> dict:
    """Quantize the SDK folder ``sdk_dir`` into ``sdk_dir/int8``, evaluated.

    ``model_cfg`` is the fused model's deploy config. ``qat_model``: the
    quantization-aware PyTorch model the folder was exported from, whose
    trained scales the INT8 model gets (:mod:`.qat_export`; nothing is
    calibrated). ``fp32_layers``: keep that many of the most sensitive
    layers fp32 (:func:`~.quantize.sensitivity`). Raises
    :class:`DeployError` (and leaves ``sdk_dir/int8`` absent) when the
    INT8 model's metric is more than ``tolerance`` points below fp32's.
    Returns what was measured.
    """
    from mmengine.config import Config
    from .mmdeploy_export import SDK_FILES
    task, _, model = task_processor(deploy_cfg, model_cfg)
    key, factor, label = judged_by(model.test_evaluator)
    fp32 = osp.join(sdk_dir, SDK_FILES[0])
    backends = dict(fp32=backend_model(task, fp32))
    if qat_model is not None:
        num_images, method = 1, QAT_METHOD
    inputs = [
        model_input(task, backends['fp32'], path)
        for path in calibration_images(Config.fromfile(model_cfg),
                                       num_images)
    ]
    trained = None
    if qat_model is not None:
        from .qat_export import trained_overrides
        trained = functools.partial(trained_overrides, qat_model,
                                    example=inputs[0])
        log('[deploy] INT8: the scales the quantization-aware model '
            'trained (no calibration)')
    else:
        log(f'[deploy] INT8: calibrating on {len(inputs)} training '
            f'image(s) ({method})')
    out = osp.join(sdk_dir, INT8_DIR)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    int8 = osp.join(out, SDK_FILES[0])
    try:
        quantized = quantize(fp32, int8, inputs,
                             'minmax' if trained else method, log, trained,
                             fp32_layers)
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
        **quantized,
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
    scales = ('the scales quantization-aware training learned'
              if cal['method'] == QAT_METHOD else
              f'calibration: {cal["method"]} on {cal["images"]} training '
              'images')
    kept = result.get('kept_fp32') or []
    if kept:
        scales += (f'; kept fp32 after the sensitivity pass: '
                   f'{", ".join(kept)}')
    return (markdown_table(
        ['model', result['metric_label'], 'ms / image (ORT)', 'images / s',
         'speed vs fp32'], rows) +
        f'\n\nINT8 drop {result["drop"]:.2f} points (tolerance '
        f'{result["tolerance"]}); {scales}; ONNX Runtime CPU, '
        f'{torch.get_num_threads()} threads, batch 1, median of round-robin '
        'repeats (speed: of the per-repeat ratios).\n')


__all__ = ['INT8_DIR', 'QAT_METHOD', 'export_int8', 'table', 'time_models']
