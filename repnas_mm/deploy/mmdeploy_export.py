"""Export through mmdeploy: its exporter and rewriters, its SDK files,
checked in its runtimes.

repnas_mm fuses and verifies the model (``workflow.deploy``); mmdeploy then
does what it is for: ``torch2onnx`` (its rewriters put e.g. a detector's
post-processing into the graph) and ``export2SDK`` (``deploy.json``,
``pipeline.json``, ``detail.json``). Nothing goes into place before the
exported model has run, on real images, in mmdeploy's ONNX Runtime backend
and in its SDK (``mmdeploy_runtime``), and agreed with PyTorch.
"""
import contextlib
import functools
import os
import os.path as osp
import shutil
import tempfile
from typing import Callable, List, Sequence

import numpy as np
import torch

from repnas_mm.resources import config_path
from .model import DeployError

#: What mmdeploy writes into an SDK folder, in the order it is moved in.
SDK_FILES = ('end2end.onnx', 'deploy.json', 'pipeline.json', 'detail.json')
#: Top detections compared per image.
TOP_DETECTIONS = 10


def default_deploy_config(cfg) -> str:
    """The shipped dynamic-shape ONNX Runtime config (``configs/deploy/``,
    mmdeploy's format) for the task of the model config ``cfg`` (its
    ``default_scope``)."""
    scope = cfg.get('default_scope', 'mmpretrain')
    task = {'mmpretrain': 'classification', 'mmdet': 'detection'}.get(scope)
    if task is None:
        raise DeployError(f'no deploy config for the {scope!r} codebase: '
                          'pass --deploy-cfg')
    try:
        path = config_path(f'deploy/{task}_onnxruntime_dynamic.py')
    except FileNotFoundError as exc:
        raise DeployError(f'{exc}; pass --deploy-cfg') from None
    return path


@contextlib.contextmanager
def torchscript_exporter_by_default():
    """``torch.onnx.export`` calls that do not say ``dynamo=`` use TorchScript.

    torch >= 2.9 exports with the dynamo exporter by default (it needs
    onnxscript, and mmdeploy's rewriters patch the TorchScript tracer);
    mmdeploy 1.3 calls ``torch.onnx.export`` without the argument. Inside
    this context such calls get ``dynamo=False``; a call that asks for
    dynamo still gets it. The one place this default is decided.
    """
    original = torch.onnx.export

    @functools.wraps(original)
    def export(*args, **kwargs):
        kwargs.setdefault('dynamo', False)
        return original(*args, **kwargs)

    torch.onnx.export = export
    try:
        yield
    finally:
        torch.onnx.export = original


def export_sdk(deploy_cfg: str,
               model_cfg: str,
               checkpoint: str,
               images: Sequence[str],
               work_dir: str,
               tolerance: float = 1e-3,
               log: Callable[[str], None] = print) -> dict:
    """Export ``checkpoint`` with mmdeploy into ``work_dir``, verified.

    ``model_cfg``/``checkpoint`` are the fused model's (what
    ``workflow.deploy`` wrote). The export goes to a temporary folder; it
    runs in mmdeploy's ONNX Runtime backend and in the SDK on ``images``;
    only if both agree with PyTorch within ``tolerance`` (see
    :func:`compare`) are the SDK files moved into ``work_dir``. Raises
    :class:`DeployError` otherwise.
    """
    from mmdeploy.apis import torch2onnx
    from mmdeploy.backend.sdk.export_info import export2SDK
    os.makedirs(work_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.mmdeploy-', dir=work_dir)
    try:
        with torchscript_exporter_by_default():
            torch2onnx(images[0], tmp, SDK_FILES[0], deploy_cfg, model_cfg,
                       checkpoint, device='cpu')
        export2SDK(deploy_cfg, model_cfg, tmp, pth=checkpoint, device='cpu')
        errors = compare(deploy_cfg, model_cfg, checkpoint, tmp, images)
        worst = max(errors.values())
        if worst > tolerance:
            what = ', '.join(f'{k} {v:.2e}' for k, v in errors.items())
            raise DeployError(
                f'the mmdeploy export disagrees with PyTorch ({what}; '
                f'tolerance {tolerance:g}); nothing was written')
        for name in SDK_FILES:
            os.replace(osp.join(tmp, name), osp.join(work_dir, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f'[deploy] mmdeploy wrote the SDK folder ({", ".join(SDK_FILES)}); '
        f'on {len(images)} real image(s) vs PyTorch: '
        + ', '.join(f'{k} {v:.2e}' for k, v in errors.items()))
    return dict(onnx=osp.join(work_dir, SDK_FILES[0]), sdk_dir=work_dir,
                **{f'{k}_error': v for k, v in errors.items()})


def compare(deploy_cfg: str, model_cfg: str, checkpoint: str, sdk_dir: str,
            images: Sequence[str]) -> dict:
    """Max disagreement with PyTorch of mmdeploy's ORT backend and its SDK.

    PyTorch is mmdeploy's own ``build_pytorch_model`` of ``checkpoint``;
    without a checkpoint the reference is the ORT backend itself (so only
    the SDK is checked: e.g. an INT8 model, which PyTorch does not run).
    Classifiers: the largest difference of a class score (softmax) over
    the classes the SDK reports; a different top-1 class counts as 1.
    Detectors: :func:`_detection_gap` over the top
    :data:`TOP_DETECTIONS` detections of PyTorch.
    """
    from mmdeploy.apis.utils import build_task_processor
    from mmdeploy.utils import load_config
    deploy, model = load_config(deploy_cfg, model_cfg)
    task = build_task_processor(model, deploy, 'cpu')
    backend = task.build_backend_model([osp.join(sdk_dir, SDK_FILES[0])])
    torch_model = task.build_pytorch_model(checkpoint) if checkpoint else \
        backend
    detector = deploy.codebase_config.type == 'mmdet'
    sdk = _sdk_model(sdk_dir, detector)
    input_shape = deploy.onnx_config.get('input_shape')

    def run(net, path):
        # Fresh inputs per model: test_step writes its predictions into the
        # data samples it is given.
        inputs, _ = task.create_input(path, input_shape)
        with torch.no_grad():
            sample = net.test_step(inputs)[0]
        if detector:
            return _detections(sample.pred_instances)
        return sample.pred_score.cpu().numpy()

    worst = dict(onnxruntime=0.0, sdk=0.0)
    for path in images:
        ref, ort = run(torch_model, path), run(backend, path)
        image = _read_bgr(path)
        if detector:
            ort_gap = _detection_gap(ref, ort, image.shape)
            boxes, labels = sdk(image)[:2]
            sdk_gap = _detection_gap(
                ref, (boxes[:, :4], boxes[:, 4], labels), image.shape)
        else:
            ort_gap = _score_gap(ref, ort)
            sdk_gap = _sdk_score_gap(ref, sdk(image))
        worst['onnxruntime'] = max(worst['onnxruntime'], ort_gap)
        worst['sdk'] = max(worst['sdk'], sdk_gap)
    return worst


def _sdk_model(sdk_dir: str, detector: bool):
    from .sdk import Classifier, Detector
    return (Detector if detector else Classifier)(sdk_dir, 'cpu', 0)


def _read_bgr(path: str) -> np.ndarray:
    import mmcv
    return mmcv.imread(path, channel_order='bgr')


def _score_gap(ref: np.ndarray, got: np.ndarray) -> float:
    """Largest class-score difference; 1.0 if the top-1 class differs."""
    if int(ref.argmax()) != int(got.argmax()):
        return 1.0
    return float(np.abs(ref - got).max())


def _sdk_score_gap(ref: np.ndarray, got) -> float:
    """The SDK's ``[(label, score), ...]`` (best first) against ``ref``."""
    if not got or int(got[0][0]) != int(ref.argmax()):
        return 1.0
    return max(abs(float(score) - float(ref[int(label)]))
               for label, score in got)


def _detections(instances):
    """(boxes, scores, labels) as numpy, best first."""
    order = instances.scores.argsort(descending=True)
    return (instances.bboxes[order].cpu().numpy(),
            instances.scores[order].cpu().numpy(),
            instances.labels[order].cpu().numpy())


def _inside(detections, shape):
    """(boxes clipped to the image, scores, labels) of the detections whose
    box centre lies in an image of ``shape`` (H, W, ...)."""
    boxes, scores, labels = (np.asarray(a) for a in detections)
    boxes = boxes.astype(np.float64).reshape(-1, 4)
    height, width = shape[:2]
    cx, cy = boxes[:, 0::2].mean(1), boxes[:, 1::2].mean(1)
    keep = (cx >= 0) & (cx <= width) & (cy >= 0) & (cy <= height)
    boxes = boxes[keep]
    # To the last pixel, as the SDK clips (the graph clips to the size):
    # the same box either way once it reaches the border.
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height - 1)
    return boxes, scores[keep], labels[keep]


def _detection_gap(ref, got, shape) -> float:
    """How far ``got`` is from PyTorch's top detections ``ref``.

    Each of the top :data:`TOP_DETECTIONS` reference detections is matched
    to the closest detection of ``got`` with the same label (order-free:
    near-equal scores may swap places); the gap is the largest box-corner
    difference (as a fraction of the image's longer side) or score
    difference over the matches, 1.0 if one has no match of its label.
    """
    # mmdet's CenterNet keeps boxes that reach outside the image as they
    # are; mmdeploy's graph clips them to its input size, and its SDK to
    # the image's last pixel, dropping those centred outside it. Compared:
    # the detections centred in the image, clipped to its last pixel.
    ref_boxes, ref_scores, ref_labels = _inside(ref, shape)
    boxes, scores, labels = _inside(got, shape)
    size = float(max(shape[:2]))
    worst = 0.0
    for i in range(min(TOP_DETECTIONS, len(ref_scores))):
        same = labels == ref_labels[i]
        if not same.any():
            return 1.0
        box_gap = np.abs(boxes[same] - ref_boxes[i]).max(axis=1) / size
        score_gap = np.abs(scores[same] - ref_scores[i])
        worst = max(worst, float(np.maximum(box_gap, score_gap).min()))
    return worst


def image_paths_of(batches) -> List[str]:
    """The image files of the verification batches (their data samples)."""
    paths = []
    for batch in batches:
        for sample in batch['data_samples']:
            path = sample.metainfo.get('img_path')
            if path:
                paths.append(path)
    return paths


__all__ = ['compare', 'export_sdk', 'image_paths_of',
           'torchscript_exporter_by_default']
