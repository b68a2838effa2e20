"""An exported model evaluated on the config's test set with its own metric.

Through mmdeploy's ONNX Runtime backend model (with the config's data
preprocessor), the way ``tools/test.py`` evaluates a PyTorch model: fp32 and
INT8 exports go through the same evaluator.
"""
from typing import Callable, Dict

import numpy as np
import torch

from .model import DeployError

#: The metric a config is judged by, per evaluator type: its key, the
#: factor to points, a label.
METRICS = dict(Accuracy=('accuracy/top1', 1.0, 'top-1 (%)'),
               CocoMetric=('coco/bbox_mAP', 100.0, 'bbox mAP (x100)'))


def task_processor(deploy_cfg: str, model_cfg: str):
    """(mmdeploy's task processor, deploy config, model config)."""
    from mmdeploy.apis.utils import build_task_processor
    from mmdeploy.utils import load_config
    deploy, model = load_config(deploy_cfg, model_cfg)
    return build_task_processor(model, deploy, 'cpu'), deploy, model


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
            f'evaluating the export needs the config\'s test set, which is '
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
                log(f'[deploy] evaluating {what}: {seen}/{total} images')
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


__all__ = ['METRICS', 'backend_model', 'evaluate', 'judged_by', 'model_input',
           'points', 'task_processor']
