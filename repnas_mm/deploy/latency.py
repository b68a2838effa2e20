"""Latency and throughput: training-time vs fused vs ONNX Runtime vs the
references (stock RepVGG deploy of the same arch, ResNet-18/50).

For an arch name, the models are 1000-class classifiers; for a config, the
config's model, with the references swapped in as its backbone. CUDA when
present (batch 128, fp32, the papers' setting), else the CPU. Medians of
round-robin repeats (repnas_mm.benchmark).
"""
import copy
import json
import os
import os.path as osp
import tempfile
from typing import Dict, Optional

import torch

from repnas_mm.benchmark import (cuda_peak_mib, describe_device,
                                 markdown_table, time_round_robin)
from repnas_mm.rep import reparameterize_model
from repnas_mm.evidence import command_line

from .model import DeployError, build_model, load_for_deploy
from .onnx import export_onnx

REFERENCES = (('ResNet-18', 18, 512), ('ResNet-50', 50, 2048))


def imagenet_classifier(backbone: dict, channels: int):
    """An mmpretrain ``ImageClassifier`` with ``backbone`` (``channels``
    out), global pooling and a 1000-class linear head."""
    from mmpretrain.registry import MODELS
    return MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=backbone,
            neck=dict(type='GlobalAveragePooling'),
            head=dict(
                type='LinearClsHead', num_classes=1000,
                in_channels=channels)))


def _with_backbone(cfg, backbone: dict, channels: int):
    """The config's model with another backbone (and matching widths)."""
    from .model import build_model_unchecked
    cfg = copy.deepcopy(cfg)
    cfg.model.backbone = backbone
    if 'neck' in cfg.model and 'in_channels' in cfg.model.neck:
        cfg.model.neck.in_channels = channels
    elif 'head' in cfg.model and 'in_channels' in cfg.model.head:
        cfg.model.head.in_channels = channels
    return build_model_unchecked(cfg)


def build_candidates(target: str, checkpoint: Optional[str] = None,
                     cfg_options: Optional[dict] = None):
    """name -> eval-mode model, and the default input size."""
    from repnas_mm.models import ODBBNet
    if target in ODBBNet.arch_settings:
        arch = target
        width = ODBBNet.arch_settings[arch]['channels'][-1]
        training = imagenet_classifier(
            dict(type='ODBBNet', arch=arch, branches='full'), width)
        repvgg = imagenet_classifier(
            dict(type='RepVGG', arch=arch, deploy=True),
            width) if arch != 'vgg16' else None
        references = {
            name: imagenet_classifier(dict(type='ResNet', depth=depth),
                                      channels)
            for name, depth, channels in REFERENCES
        }
        size, label = 224, f'ODBB-{arch} classifier, all branches'
    else:
        from repnas_mm.config import read_config
        if not osp.isfile(target):
            raise DeployError(f'neither an ODBBNet arch nor a config: '
                              f'{target}')
        cfg = read_config(target, cfg_options)
        training = (load_for_deploy(cfg, checkpoint)[0]
                    if checkpoint else build_model(cfg))
        backbone = cfg.model.backbone
        arch = backbone.get('arch')
        repvgg = None
        if backbone.get('type') == 'ODBBNet' and isinstance(arch, str) \
                and arch != 'vgg16':
            scope = cfg.get('default_scope', 'mmpretrain')
            repvgg = _with_backbone(
                cfg,
                dict(type='RepVGG' if scope == 'mmpretrain' else
                     'mmpretrain.RepVGG', arch=arch, out_indices=(3, ),
                     deploy=True),
                ODBBNet.arch_settings[arch]['channels'][-1])
        references = {
            f'{name} backbone': _with_backbone(
                cfg, dict(type='ResNet', depth=depth, out_indices=(3, )),
                channels)
            for name, depth, channels in REFERENCES
        }
        detector = cfg.get('default_scope') == 'mmdet'
        size = 512 if detector else 224
        label = osp.splitext(osp.basename(target))[0]
    models = {f'{label} (training-time)': training.eval()}
    models['fused'] = reparameterize_model(training).eval()
    if repvgg is not None:
        suffix = '' if target in ODBBNet.arch_settings else ' backbone'
        models[f'stock RepVGG-{arch} deploy{suffix}'] = repvgg.eval()
    for name, model in references.items():
        models[name] = model.eval()
    return models, size


def run_latency_benchmark(target: str,
                          checkpoint: Optional[str] = None,
                          out_dir: str = 'work_dirs/latency',
                          batch_size: Optional[int] = None,
                          input_size: Optional[int] = None,
                          repeats: int = 10,
                          iters: int = 3,
                          device: Optional[str] = None,
                          onnx: bool = True,
                          cfg_options: Optional[dict] = None,
                          dtype: str = 'float32',
                          log=print) -> Dict[str, dict]:
    """Time every candidate; write latency.md, latency.json, latency.png.

    ``dtype='float16'`` (CUDA only) runs every PyTorch model in half
    precision (no ONNX Runtime row). On CUDA the table also has each
    model's peak memory for one batch (``torch.cuda.max_memory_allocated``
    above what was allocated before).
    """
    from .verify import flatten
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    cuda = torch.device(device).type == 'cuda'
    if dtype not in ('float32', 'float16'):
        raise DeployError(f'dtype must be float32 or float16, got {dtype!r}')
    if dtype == 'float16' and not cuda:
        raise DeployError('float16 latency is measured on CUDA only (a CPU '
                          'runs half-precision convs slower than float32)')
    batch = batch_size or (128 if cuda else 8)
    models, size = build_candidates(target, checkpoint, cfg_options)
    size = input_size or size
    x = torch.randn(batch, 3, size, size)
    runs = {}
    for name, model in models.items():
        model.to(device, getattr(torch, dtype))
        runs[name] = (lambda m=model, xd=x.to(device, getattr(torch, dtype)):
                      flatten(m(xd, mode='tensor')))
    peaks = {name: cuda_peak_mib(run, device) for name, run in runs.items()
             } if cuda else {}
    notes = []
    if onnx and dtype == 'float32':
        runs.update(_onnx_run(models['fused'], x, notes))
    where = describe_device(device)
    precision = 'fp32' if dtype == 'float32' else 'fp16'
    log(f'[latency] {where}; batch {batch}, {size}x{size}, {precision}; '
        f'{repeats} repeats x {iters} iterations, round-robin')
    timings = time_round_robin(runs, batch, device, repeats, iters)
    fused = timings['fused']
    rows, results = [], {}
    for name, t in timings.items():
        results[name] = dict(
            ms_per_batch=1e3 * t.median,
            images_per_second=t.images_per_second,
            vs_fused=fused.median / t.median)
        rows.append([
            name, f'{1e3 * t.median:.1f}', f'{t.images_per_second:.1f}',
            f'{fused.median / t.median:.2f}'
        ])
        if cuda:
            results[name]['cuda_peak_mib'] = peaks.get(name)
            rows[-1].append('-' if name not in peaks else
                            f'{peaks[name]:.0f}')
    table = markdown_table(
        ['model', 'ms / batch (median)', 'images / s', 'speed vs fused'] +
        (['CUDA peak MiB'] if cuda else []), rows)
    header = (f'{where}; batch {batch}, {size}x{size}, {precision}; median '
              f'of {repeats} round-robin repeats of {iters} iterations')
    report = header + '\n\n' + table + '\n' + ''.join(
        '\n' + n + '\n' for n in notes)
    log(report)
    os.makedirs(out_dir, exist_ok=True)
    with open(osp.join(out_dir, 'latency.md'), 'w') as f:
        f.write(report)
    with open(osp.join(out_dir, 'latency.json'), 'w') as f:
        json.dump(dict(device=where, batch_size=batch, input_size=size,
                       dtype=dtype, results=results,
                       command=command_line()), f, indent=2)
    _bar_chart(results, header, osp.join(out_dir, 'latency.png'))
    log(f'[latency] wrote {out_dir}/latency.md, latency.json, latency.png')
    return results


def _onnx_run(fused, x, notes):
    """``{'fused, ONNX Runtime': run}`` or a note why there is none."""
    import onnxruntime as ort
    folder = tempfile.mkdtemp(prefix='repnas_latency_')
    path = osp.join(folder, 'fused.onnx')
    try:
        # A copy: the model itself stays where it is timed (a GPU).
        export_onnx(copy.deepcopy(fused).cpu().float(), x[:1], path)
    except DeployError as exc:
        notes.append(f'No ONNX Runtime row: {exc}')
        return {}
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(
        path, options, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    array = x.numpy()
    notes.append('ONNX Runtime: CPUExecutionProvider, '
                 f'{options.intra_op_num_threads} threads')
    return {'fused, ONNX Runtime': lambda: session.run(None, {name: array})}


def _bar_chart(results, title, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from repnas_mm.atomic import save_figure
    names = list(results)
    values = [results[n]['images_per_second'] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.4))
    bars = ax.barh(names[::-1], values[::-1], color='#4c72b0')
    for bar, value in zip(bars, values[::-1]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f' {value:.1f}', va='center', fontsize=8)
    ax.set_xlabel('images / s (higher is faster)')
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
