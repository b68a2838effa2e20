"""Fused ODBBNet checkpoints in stock mmpretrain RepVGG's format.

A fused ODBBNet of a RepVGG arch is, tensor for tensor, RepVGG deploy: only
the names differ (``<layer>.conv.fused_conv.*`` vs
``<layer>.branch_reparam.*``).
"""
import copy
import os.path as osp

from .model import DeployError, build_model_unchecked
from .staging import dump_config, save_checkpoint
from .verify import raw_outputs, relative_error

REPVGG_ARCHS = ('A0', 'A1', 'A2', 'B0', 'B1', 'B1g2', 'B1g4', 'B2', 'B2g2',
                'B2g4', 'B3', 'B3g2', 'B3g4')
_OURS, _THEIRS = '.conv.fused_conv.', '.branch_reparam.'


def to_repvgg_state_dict(state_dict: dict, prefix: str = 'backbone.'):
    """Rename a fused ODBBNet's tensors to RepVGG deploy's names."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            if _OURS not in key:
                raise DeployError(
                    f'{key!r} is not a fused ODBBNet tensor: only a fused '
                    'network converts to RepVGG deploy')
            key = key.replace(_OURS, _THEIRS)
        out[key] = value
    return out


def _arch_name(arch) -> str:
    return arch.get('name', '(custom)') if isinstance(arch, dict) \
        else repr(arch)


def to_repvgg_config(cfg):
    """A copy of ``cfg`` whose backbone is stock mmpretrain RepVGG deploy."""
    backbone = cfg.model.get('backbone', {})
    arch = backbone.get('arch')
    if backbone.get('type') != 'ODBBNet' or arch not in REPVGG_ARCHS:
        raise DeployError(
            '--format mmpretrain-repvgg needs an ODBBNet backbone with a '
            f'RepVGG arch ({", ".join(REPVGG_ARCHS)}); this one is '
            f'{backbone.get("type")} {_arch_name(arch)}')
    out = copy.deepcopy(cfg)
    scope = cfg.get('default_scope', 'mmpretrain')
    out.model.backbone = dict(
        type='RepVGG' if scope == 'mmpretrain' else 'mmpretrain.RepVGG',
        arch=arch,
        out_indices=backbone.get('out_indices', (3, )),
        deploy=True)
    out.custom_imports = dict(
        imports=['mmpretrain.models'], allow_failed_imports=False)
    return out


def write_repvgg(cfg, fused, meta, inputs, work_dir, name, tolerance, log):
    """A stock mmpretrain RepVGG deploy checkpoint and config of the fused
    model in ``work_dir``, checked to load strictly and to compute what it
    does within ``tolerance``: their paths and the error."""
    repvgg_cfg = to_repvgg_config(cfg)
    state = to_repvgg_state_dict(fused.state_dict())
    stock = build_model_unchecked(repvgg_cfg)
    stock.load_state_dict(state, strict=True)
    stock.eval()
    error = relative_error(
        [t for x in inputs for t in raw_outputs(stock, x)],
        [t for x in inputs for t in raw_outputs(fused, x)])
    if error > tolerance:
        raise DeployError(f'stock RepVGG differs from the fused model: '
                          f'{error:.2e} > {tolerance:g}')
    ckpt = osp.join(work_dir, f'{name}_repvgg.pth')
    path = osp.join(work_dir, f'{name}_repvgg.py')
    save_checkpoint(state, meta, ckpt)
    dump_config(repvgg_cfg, path)
    log(f'[deploy] stock mmpretrain RepVGG deploy checkpoint and config '
        f'written: it loads strictly, max relative error {error:.2e}')
    return dict(repvgg_checkpoint=ckpt, repvgg_config=path,
                repvgg_error=error)
