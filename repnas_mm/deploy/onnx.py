"""ONNX export of a fused model and its check in ONNX Runtime."""
import json
import os.path as osp
import warnings
from typing import List, Sequence

import torch
import torch.nn as nn

from repnas_mm.atomic import atomic_path

from .model import DeployError, is_fused
from .verify import flatten

OPSET = 17


class TensorOutputs(nn.Module):
    """``model(x, mode='tensor')`` as a flat tuple of tensors (for export)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return tuple(flatten(self.model(x, mode='tensor')))


def _unexportable(model) -> List[str]:
    """Layers ONNX Runtime cannot run without custom ops."""
    try:
        from mmcv.ops import ModulatedDeformConv2d
    except ImportError:
        return []
    return [
        name for name, m in model.named_modules()
        if isinstance(m, ModulatedDeformConv2d)
    ]


def export_onnx(model, example: torch.Tensor, path: str,
                opset: int = OPSET, check=None) -> dict:
    """Export the fused ``model`` (batch, height and width dynamic).

    Refuses an unfused model (exporting the training-time graph is the
    classic deployment mistake) and layers ONNX Runtime cannot run.
    ``check(onnx_file)`` runs on the exported file before it is renamed into
    place (its return value is ``parity_error`` in the result); if it raises,
    no file is left behind.
    """
    import onnx
    if not is_fused(model):
        raise DeployError('refusing to export an unfused model: fuse it '
                          'first (reparameterize_model)')
    bad = _unexportable(model)
    if bad:
        raise DeployError(
            f'{bad[0]} is a DCNv2 layer (mmcv ModulatedDeformConv2d), which '
            'ONNX Runtime cannot run without mmdeploy\'s custom ops: export '
            'a use_dcn=False config, or use mmdeploy with its ONNX Runtime '
            'ops')
    wrapper = TensorOutputs(model).eval()
    with torch.no_grad():
        num_outputs = len(wrapper(example))
    output_names = [f'output{i}' for i in range(num_outputs)]
    dynamic = {0: 'batch', 2: 'height', 3: 'width'}
    dynamic_axes = {'input': dynamic}
    dynamic_axes.update({name: {0: 'batch'} for name in output_names})
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) is the one checked here: the
        # dynamo exporter needs onnxscript. torch warns that it is legacy.
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (example, ),
            tmp,
            input_names=['input'],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False)
        onnx.checker.check_model(tmp)
        parity_error = check(tmp) if check is not None else None
    return dict(
        parity_error=parity_error,
        opset_version=opset,
        input_names=['input'],
        output_names=output_names,
        dynamic_axes=dynamic_axes)


def run_onnxruntime(path: str, inputs: Sequence[torch.Tensor]):
    """Outputs of the ONNX model for each input tensor (CPU provider)."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return [[torch.from_numpy(o) for o in session.run(None, {name: x.numpy()})]
            for x in inputs]


def write_json(data: dict, path: str):
    with atomic_path(path) as tmp:
        with open(tmp, 'w') as f:
            json.dump(data, f, indent=2)
            f.write('\n')


def write_mmdeploy_files(work_dir: str, cfg, checkpoint: str,
                         onnx_info: dict, task: str, codebase: str):
    """deploy.json, pipeline.json, detail.json in mmdeploy's SDK layout."""
    from importlib.metadata import version
    try:
        codebase_version = version(codebase)
    except Exception:  # noqa: BLE001
        codebase_version = 'unknown'
    onnx_config = dict(
        type='onnx',
        export_params=True,
        keep_initializers_as_inputs=False,
        opset_version=onnx_info['opset_version'],
        save_file='end2end.onnx',
        input_names=onnx_info['input_names'],
        output_names=onnx_info['output_names'],
        input_shape=None,
        optimize=True,
        dynamic_axes=onnx_info['dynamic_axes'])
    write_json(
        dict(
            version='1.3.1',
            task=task,
            models=[
                dict(
                    name=osp.basename(osp.splitext(cfg.filename)[0]),
                    net='end2end.onnx',
                    weights='',
                    backend='onnxruntime',
                    precision='FP32',
                    batch_size=1,
                    dynamic_shape=True)
            ],
            customs=[]), osp.join(work_dir, 'deploy.json'))
    preprocess = [
        dict(t) for t in cfg.test_dataloader.dataset.get('pipeline', [])
        if t['type'] not in ('LoadAnnotations', )
    ]
    prep = cfg.model.get('data_preprocessor', None) or cfg.get(
        'data_preprocessor', {})
    if prep.get('mean') is not None:
        preprocess.append(
            dict(
                type='Normalize',
                mean=list(prep['mean']),
                std=list(prep['std']),
                to_rgb=bool(prep.get('to_rgb', prep.get('bgr_to_rgb',
                                                        False)))))
    write_json(
        dict(pipeline=dict(
            input=['img'],
            output=['post_output'],
            tasks=[
                dict(
                    type='Task',
                    module='Transform',
                    name='Preprocess',
                    input=['img'],
                    output=['prep_output'],
                    transforms=preprocess),
                dict(
                    name='end2end',
                    type='Task',
                    module='Net',
                    is_batched=True,
                    input=['prep_output'],
                    output=['infer_output'],
                    input_map=dict(img='input'),
                    output_map={}),
                dict(
                    type='Task',
                    module=codebase,
                    name='postprocess',
                    component=cfg.model.get('head', cfg.model.get(
                        'bbox_head', {})).get('type', ''),
                    input=['prep_output', 'infer_output'],
                    output=['post_output'])
            ])), osp.join(work_dir, 'pipeline.json'))
    write_json(
        dict(
            version='1.3.1',
            codebase=dict(
                task=task,
                codebase=codebase,
                version=codebase_version,
                pth=osp.abspath(checkpoint),
                config=osp.abspath(cfg.filename)),
            codebase_config=dict(type=codebase, task=task),
            onnx_config=onnx_config,
            backend_config=dict(type='onnxruntime'),
            calib_config={}), osp.join(work_dir, 'detail.json'))
