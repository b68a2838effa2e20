"""ONNX export of a fused network's raw outputs (for latency benchmarks).

Deployment exports go through mmdeploy (:mod:`.mmdeploy_export`); this
plain export of ``model(x, mode='tensor')`` is what the latency benchmark
times in ONNX Runtime.
"""
import json
import warnings

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


def refuse_unexportable(model):
    """Raise :class:`DeployError` for a model that is not fused or has
    layers ONNX Runtime cannot run without custom ops (DCNv2)."""
    if not is_fused(model):
        raise DeployError('refusing to export an unfused model: fuse it '
                          'first (reparameterize_model)')
    try:
        from mmcv.ops import ModulatedDeformConv2d
    except ImportError:
        return
    bad = [
        name for name, m in model.named_modules()
        if isinstance(m, ModulatedDeformConv2d)
    ]
    if bad:
        raise DeployError(
            f'{bad[0]} is a DCNv2 layer (mmcv ModulatedDeformConv2d), which '
            'ONNX Runtime and the mmdeploy SDK cannot run without custom '
            'ops: export a use_dcn=False config (e.g. '
            'configs/centernet_odbb_a0_nodcn_coco.py)')


def export_onnx(model, example: torch.Tensor, path: str,
                opset: int = OPSET) -> dict:
    """Export the fused ``model`` (batch, height and width dynamic).

    Refuses an unfused model (exporting the training-time graph is the
    classic deployment mistake) and layers ONNX Runtime cannot run. The
    file is written under a temporary name and renamed when complete.
    """
    import onnx
    refuse_unexportable(model)
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
    return dict(
        opset_version=opset,
        input_names=['input'],
        output_names=output_names,
        dynamic_axes=dynamic_axes)


def write_json(data: dict, path: str):
    with atomic_path(path) as tmp:
        with open(tmp, 'w') as f:
            json.dump(data, f, indent=2)
            f.write('\n')
