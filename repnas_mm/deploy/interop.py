"""Fused ODBBNet checkpoints in stock mmpretrain RepVGG's format.

A fused ODBBNet of a RepVGG arch is, tensor for tensor, RepVGG deploy: only
the names differ (``<layer>.conv.fused_conv.*`` vs
``<layer>.branch_reparam.*``).
"""
import copy

from .model import DeployError

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
