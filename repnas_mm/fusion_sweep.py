"""Conversion and fusion on every CNN family a user may bring.

``convert_to_odbb`` promises, for any model, that each KxK Conv+BN pair it
converts fuses back exactly, whatever branches grow, and that what it
cannot convert exactly it leaves alone with a warning. This module checks
that promise on one model per family:

- timm: one model per timm module (timm's own grouping of its model
  files: ``resnet``, ``dpn``, ``res2net``, ...), the smallest of the module's
  models that has a BatchNorm (:func:`select_timm_models` builds every
  model on the meta device to count parameters), plus the models a user
  reported (:data:`TIMM_REPORTED`);
- OpenMMLab: every backbone that mmpretrain and mmdet export, built with
  the small arguments of :data:`OPENMMLAB_ARGS`.

Each model (:func:`check_fusion`) gets BN statistics and affine
parameters as a trained model's might be, is converted, grows every legal
branch in every converted block, gets new BN statistics (branch BNs
included), is fused, and its outputs are compared with the unfused
model's. ``tools/sweep_fusion.py`` runs the sweep and writes the table
that docs/design.md shows; the tests run it (tests/test_fusion_sweep.py).
"""
import importlib
import re
import warnings
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from repnas_mm.rep import ODBB, grow, reparameterize_model
from repnas_mm.rep.block import MAIN
from repnas_mm.rep.convert import convert_to_odbb
from repnas_mm.rep.outputs import relative_error, set_trained_like_norms
from repnas_mm.rep.reparameterize import record_module_outputs

#: Models named in a user's report (issue 27), checked beside the families.
TIMM_REPORTED = ('dpn48b', 'resnet26d', 'resnest14d', 'res2net50_14w_8s',
                 'vgg11_bn')

#: The fused model's error bound: float64, where depth accumulates rounding;
#: float32 for the few models that make float32 tensors of their own.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}

#: Small arguments for the OpenMMLab backbones that need some, by
#: ``scope::type``; backbones not named here are built with none.
OPENMMLAB_ARGS: Dict[str, dict] = {
    'mmpretrain::ResNet': dict(depth=18),
    'mmpretrain::ResNetV1c': dict(depth=18),
    'mmpretrain::ResNetV1d': dict(depth=18),
    'mmpretrain::ResNet_CIFAR': dict(depth=18),
    'mmpretrain::ResNeXt': dict(depth=50, groups=4, width_per_group=8),
    'mmpretrain::SEResNet': dict(depth=50),
    'mmpretrain::SEResNeXt': dict(depth=50, groups=4, width_per_group=8),
    'mmpretrain::ResNeSt': dict(depth=50),
    'mmpretrain::Res2Net': dict(depth=50),
    'mmpretrain::RegNet': dict(arch='regnetx_400mf'),
    'mmpretrain::RepVGG': dict(arch='A0'),
    'mmpretrain::VGG': dict(depth=11, norm_cfg=dict(type='BN')),
    'mmpretrain::LeViT': dict(arch='128s'),
    'mmpretrain::MobileOne': dict(arch='s0'),
    'mmpretrain::PCPVT': dict(arch='small'),
    'mmpretrain::SVT': dict(arch='small'),
    'mmpretrain::Vig': dict(arch='tiny'),
    'mmpretrain::PyramidVig': dict(arch='tiny'),
    'mmpretrain::RepLKNet': dict(arch=dict(
        large_kernel_sizes=[7, 7, 7, 7], layers=[1, 1, 1, 1],
        channels=[16, 32, 64, 128], small_kernel=3, dw_ratio=1)),
    'mmpretrain::RepMLPNet': dict(arch=dict(
        channels=[16, 32, 64, 128], depths=[1, 1, 1, 1],
        sharesets_nums=[1, 4, 8, 16]), img_size=64),
    'mmpretrain::TIMMBackbone': dict(model_name='resnet18'),
    'mmpretrain::CSPDarkNet': dict(depth=53),
    'mmpretrain::CSPResNet': dict(depth=50),
    'mmpretrain::CSPResNeXt': dict(depth=50),
    'mmpretrain::HRNet': dict(arch='w18'),
    'mmpretrain::MobileNetV3': dict(arch='small'),
    'mmpretrain::EfficientNet': dict(arch='b0'),
    'mmpretrain::EfficientNetV2': dict(arch='b0'),
    'mmdet::ResNet': dict(depth=18),
    'mmdet::ResNetV1d': dict(depth=18),
    'mmdet::ResNeXt': dict(depth=50, groups=4, base_width=8),
    'mmdet::ResNeSt': dict(depth=50),
    'mmdet::Res2Net': dict(depth=50),
    'mmdet::DetectoRS_ResNet': dict(depth=50),
    'mmdet::DetectoRS_ResNeXt': dict(depth=50, groups=4, base_width=8),
    'mmdet::TridentResNet': dict(depth=50, num_stages=3, num_branch=3,
                                 test_branch_idx=1, strides=(1, 2, 2),
                                 dilations=(1, 1, 1),
                                 trident_dilations=(1, 2, 3),
                                 out_indices=(2, )),
    'mmdet::RegNet': dict(arch='regnetx_400mf'),
    'mmdet::HRNet': dict(extra=dict(
        stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK',
                    num_blocks=(2, ), num_channels=(32, )),
        stage2=dict(num_modules=1, num_branches=2, block='BASIC',
                    num_blocks=(2, 2), num_channels=(16, 32)),
        stage3=dict(num_modules=1, num_branches=3, block='BASIC',
                    num_blocks=(2, 2, 2), num_channels=(16, 32, 64)),
        stage4=dict(num_modules=1, num_branches=4, block='BASIC',
                    num_blocks=(2, 2, 2, 2),
                    num_channels=(16, 32, 64, 128)))),
    'mmdet::HourglassNet': dict(downsample_times=2, num_stacks=1,
                                stage_channels=(64, 64, 96),
                                stage_blocks=(1, 1, 1), feat_channel=64),
    'mmdet::SSDVGG': dict(depth=11, with_last_pool=False,
                          ceil_mode=True, out_indices=(3, 4),
                          out_feature_indices=(12, 19)),
    'mmdet::Darknet': dict(depth=53),
    'mmdet::CSPDarknet': dict(deepen_factor=0.33, widen_factor=0.25),
    'mmdet::CSPNeXt': dict(deepen_factor=0.167, widen_factor=0.25),
    'mmdet::EfficientNet': dict(arch='b0'),
}


#: Backbones that cannot run outside their training method, with why.
NOT_STANDALONE = {
    'mmpretrain::SparseResNet':
    'SparK pre-training\'s backbone: its sparse layers read the mask that '
    'SparK sets for each batch',
}


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def check_fusion(model: nn.Module,
                 x: torch.Tensor,
                 seed: int = 0) -> dict:
    """Convert ``model``, grow every branch, fuse; what happened.

    ``model`` (eval mode, ``x``'s dtype) is changed in place. Returns
    ``status`` (``exact``; ``unconverted``: no conv converted, ``reasons``
    say why; ``no BatchNorm``; ``inexact``; ``error``), ``converted`` (the
    count), ``left_alone`` (the conversion's warnings), ``error`` (the
    fused model's relative error against the unfused one: the worst of
    its outputs' and of the outputs of the smallest module holding each
    converted conv and its BN), ``stock_keys`` (the fused state dict has
    the model's own keys) and ``detail``.
    """
    result = dict(status='', converted=0, left_alone=[], error=None,
                  stock_keys=None, dtype=str(x.dtype).split('.')[-1],
                  detail='')
    if not has_batch_norm(model):
        result['status'] = 'no BatchNorm'
        return result
    try:
        set_trained_like_norms(model, x, seed)
        # The layout to come back to: the model fused by its own blocks'
        # verbs (timm's RepGhost, MobileOne, ... change their keys).
        stock_keys = list(reparameterize_model(model).state_dict())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            converted = convert_to_odbb(model, x[:1])
        result['converted'] = len(converted)
        result['left_alone'] = [
            str(w.message) for w in caught
            if str(w.message).startswith('convert_to_odbb left')
        ]
        for block in [m for m in model.modules() if isinstance(m, ODBB)]:
            grow(block, [n for n in block.branch_names if n != MAIN],
                 bn_scale=0.3)
        set_trained_like_norms(model, x, seed + 1)  # branch BNs too
        scopes = pair_scopes(model, converted)
        reference, blocks = outputs_of(model, x, scopes)
        fused = reparameterize_model(model)
        got, fused_blocks = outputs_of(fused, x, scopes)
        # Each pair where it sits too: a block whose output the rest of the
        # network scales down (FastViT's layer scale, 1e-5) would hide its
        # error in the model's output. (A module the model calls through
        # ``.forward``, as timm's HRNet head does, runs no hooks.)
        result['error'] = max([relative_error(got, reference)] + [
            relative_error(fused_blocks[n], blocks[n]) for n in scopes
            if n in blocks and n in fused_blocks])
        result['stock_keys'] = list(fused.state_dict()) == stock_keys
    except Exception as exc:  # recorded: the sweep reports every model
        result.update(status='error',
                      detail=f'{type(exc).__name__}: {exc}'[:300])
        return result
    if not converted:
        result['status'] = 'unconverted'
        result['detail'] = '; '.join(result['left_alone']) or \
            'no KxK conv feeds a BatchNorm directly'
    elif result['error'] <= TOLERANCE[x.dtype] and result['stock_keys']:
        result['status'] = 'exact'
    else:
        result['status'] = 'inexact'
    return result


def pair_scopes(model: nn.Module, converted: List[str]) -> List[str]:
    """For each converted conv, the smallest module holding it and its BN
    (the BN may sit outside the conv's parent), if no other pair straddles
    that module's border (its output would then differ after fusion by
    design: a deep stem holds a conv whose BN is outside). The model
    itself is left out: its outputs are compared anyway."""
    names = {id(m): n for n, m in model.named_modules()}
    pairs = []
    for conv in converted:
        pair = model.get_submodule(conv).stock_pair
        parent = names[id(pair['bn_parent'])]
        pairs.append((conv.split('.'), (f'{parent}.{pair["bn_name"]}'
                                        if parent else
                                        pair['bn_name']).split('.')))

    def inside(path, scope):
        return path[:len(scope)] == scope

    scopes = set()
    for conv, bn in pairs:
        common = []
        for a, b in zip(conv, bn):
            if a != b:
                break
            common.append(a)
        if common and all(inside(c, common) == inside(n, common)
                          for c, n in pairs):
            scopes.add('.'.join(common))
    return sorted(scopes)


def outputs_of(model: nn.Module, x: torch.Tensor, names: Sequence[str]):
    """The model's outputs on ``x`` and, by name, the first output of each
    of its modules ``names`` that ran."""
    outputs, per_module = record_module_outputs(model, x, names)
    first: Dict[str, List[torch.Tensor]] = {}
    for name, _, tensors in per_module:
        first.setdefault(name, tensors)
    return outputs, first


# -- the models ---------------------------------------------------------------
def select_timm_models(progress: Callable[[str], None] = print) -> dict:
    """Per timm module: the smallest of its models with a BatchNorm.

    Every model of timm is built on the meta device (no memory, no
    weights) to count its parameters; returns ``{module: {'model': name or
    None, 'models': how many, 'reason': why none}}``.
    """
    import timm
    selection = {}
    for module in timm.list_modules():
        names = timm.list_models(module=module)
        best, failures = None, []
        for name in names:
            try:
                with torch.device('meta'), warnings.catch_warnings():
                    warnings.simplefilter('ignore')
                    model = timm.create_model(name, pretrained=False)
            except Exception as exc:
                failures.append(f'{name}: {type(exc).__name__}')
                continue
            if has_batch_norm(model):
                size = sum(p.numel() for p in model.parameters())
                if best is None or size < best[0]:
                    best = (size, name)
        reason = '' if best else (
            f'none of its {len(names)} models has a BatchNorm' +
            (f' ({len(failures)} did not build on the meta device)'
             if failures else ''))
        selection[module] = dict(model=best[1] if best else None,
                                 models=len(names), reason=reason)
        progress(f'[sweep] {module}: {best[1] if best else reason}')
    return selection


Built = Tuple[nn.Module, int, Sequence[int]]  # model, channels, sizes


class Skipped(Exception):
    """A backbone the sweep lists with a reason instead of checking."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def runnable_input(model: nn.Module, channels: int,
                   sizes: Sequence[int]) -> Tuple[nn.Module, torch.Tensor]:
    """``model`` in eval mode and a batch of 2 that it, and it fused by its
    own blocks, run on: float64 at the first of ``sizes`` that works, else
    float32 (a model that makes float32 tensors of its own)."""
    gen = torch.Generator().manual_seed(1)
    failure = None
    for dtype in (torch.float64, torch.float32):
        model = model.to(dtype)
        model.eval()  # (some backbones' train() returns None: no chaining)
        for size in sizes:
            x = torch.randn(2, channels, size, size, generator=gen).to(dtype)
            try:
                with torch.no_grad():
                    model(x[:1])
                    reparameterize_model(model)(x[:1])
                return model, x
            except Exception as exc:  # e.g. attention over fixed windows
                failure = exc
    raise failure


def timm_model(name: str) -> Built:
    """A timm model (random weights), to run at 96 px, or at its own size
    where it needs that (timm fixes it, or 96 px fails)."""
    import timm
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    own = cfg.get('input_size', (3, 224, 224))
    sizes = [own[-1]] if cfg.get('fixed_input_size', False) else \
        [96, own[-1]]
    return model, own[0], sizes


def openmmlab_backbone_types() -> List[str]:
    """``scope::type`` of every backbone mmpretrain and mmdet export."""
    import mmdet.models.backbones as det
    import mmpretrain.models.backbones as cls
    return [f'mmpretrain::{n}' for n in sorted(cls.__all__)] + \
        [f'mmdet::{n}' for n in sorted(det.__all__)]


def openmmlab_model(key: str) -> Built:
    """An OpenMMLab backbone (stock initialisation), to run at 64 px, or
    at 224 px where it needs that."""
    from mmengine.registry import DefaultScope

    from repnas_mm.models.converted import quiet_console
    scope, kind = key.split('::')
    importlib.import_module(f'{scope}.models')  # registers them
    registry = importlib.import_module(f'{scope}.registry').MODELS
    if registry.get(kind) is None:
        raise Skipped('not registered', f'{kind} is exported by {scope} '
                      'but not in its model registry (a base class)')
    if key in NOT_STANDALONE:
        raise Skipped('not standalone', NOT_STANDALONE[key])
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope(scope), quiet_console(), \
            warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = registry.build(dict(type=kind, **OPENMMLAB_ARGS.get(key, {})))
        if hasattr(model, 'init_weights'):
            model.init_weights()
    return model, OPENMMLAB_ARGS.get(key, {}).get('in_channels', 3), (64, 224)


def run_one(build: Callable[[], Built]) -> dict:
    """Build one model and check it; a model that does not build or run is
    recorded with why (``not registered``, ``not built``, ``not run``)."""
    blank = dict(converted=0, left_alone=[], error=None, stock_keys=None,
                 dtype=None, detail='')
    try:
        model, channels, sizes = build()
    except Skipped as skip:
        return dict(blank, status=skip.status, detail=skip.reason)
    except Exception as exc:
        return dict(blank, status='not built',
                    detail=f'{type(exc).__name__}: {exc}'[:300])
    if not has_batch_norm(model):
        return dict(blank, status='no BatchNorm')
    try:
        model, x = runnable_input(model, channels, sizes)
    except Exception as exc:
        return dict(blank, status='not run',
                    detail=f'{type(exc).__name__}: {exc}'[:300])
    return check_fusion(model, x)


def short_reason(message: str) -> str:
    """``convert_to_odbb left 3 KxK conv(s) as they are (why): a, b`` ->
    ``3 (why)``."""
    match = re.match(r'convert_to_odbb left (\d+) KxK conv\(s\) as they are '
                     r'\((.*)\): ', message)
    return f'{match[1]} ({match[2]})' if match else message


def coverage_table(rows: List[dict]) -> str:
    """The sweep as Markdown: a table of the models that have a BatchNorm,
    then one line naming the families and backbones that have none."""
    from repnas_mm.benchmark import markdown_table
    table, none = [], []
    for r in rows:
        if r['status'] == 'no BatchNorm':
            none.append(f'{r["family"]}' if r['source'] == 'timm' else
                        f'{r["source"]} {r["family"]}')
            continue
        left = '; '.join(short_reason(m) for m in r['left_alone'])
        if r['status'] != 'exact' and not left:
            left = r['detail']
        error = '-' if r['error'] is None else f'{r["error"]:.1e}'
        if r.get('dtype') == 'float32':
            error += ' (float32)'
        table.append([r['source'], r['family'],
                      f'`{r["model"]}`' if r['source'] == 'timm' else '-',
                      r['status'], r['converted'], error, left or '-'])
    return markdown_table(['source', 'family', 'model', 'status',
                           'KxK pairs converted', 'fused rel. error',
                           'left alone (why)'], table) + \
        f'\nNo BatchNorm in any model ({len(none)}): {", ".join(none)}.\n'


__all__ = [
    'NOT_STANDALONE', 'OPENMMLAB_ARGS', 'Skipped', 'TIMM_REPORTED',
    'TOLERANCE', 'check_fusion', 'coverage_table',
    'openmmlab_backbone_types', 'openmmlab_model', 'run_one',
    'select_timm_models', 'short_reason', 'timm_model'
]
