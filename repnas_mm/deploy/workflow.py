"""Fuse, verify, export: the steps of ``tools/deploy.py`` as one function."""
import contextlib
import copy
import os
import os.path as osp
import shutil
import tempfile
from typing import Callable, Optional, Sequence

import torch

from repnas_mm.atomic import atomic_path
from repnas_mm.config import read_config, unwrap_converted
from repnas_mm.rep import named_odbbs, reparameterize_model

from .interop import to_repvgg_config, to_repvgg_state_dict
from .model import (DeployError, build_model_unchecked, count_refconvs,
                    load_for_deploy)
from .int8 import INT8_DIR
from .mmdeploy_export import (SDK_FILES, default_deploy_config, export_sdk,
                              image_paths_of)
from .onnx import refuse_unexportable, write_json
from .verify import (collect_batches, image_files, model_inputs, raw_outputs,
                     relative_error)


def deploy_config(cfg, model):
    """A copy of ``cfg`` that builds the fused model directly.

    Every ODBBNet is built with ``deploy=True`` and the branches the model
    kept (so the file records the searched architecture); an
    ``ODBBConverted`` or ``RefConvConverted`` backbone becomes its stock
    backbone; training-only parts (search hooks, optimizer constructor,
    initialisation) are dropped.
    """
    out = copy.deepcopy(cfg)
    kept = iter([b.branch_names for b in named_odbbs(model).values()])

    def visit(node):
        if isinstance(node, dict):
            if node.get('type') == 'ODBBNet':
                node['deploy'] = True
                node['init_cfg'] = None
                node['branches'] = [
                    list(next(kept)) for _ in range(_num_blocks(node))
                ]
            for value in node.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    # Fused, a converted backbone is the stock one again.
    unwrap_converted(out.model, init_cfg=None)
    visit(out.model)
    out.custom_hooks = [
        h for h in out.get('custom_hooks', [])
        if h.get('type') not in ('RepNASHook', 'DyRepHook')
    ]
    if 'optim_wrapper' in out:
        out.optim_wrapper.pop('constructor', None)
        out.optim_wrapper.pop('alpha_optimizer', None)
    out.load_from = None
    out.resume = False
    return out


def _num_blocks(backbone_cfg) -> int:
    from repnas_mm.models import ODBBNet
    arch = backbone_cfg['arch']
    arch = ODBBNet.arch_settings[arch] if isinstance(arch, str) else arch
    return 1 + sum(arch['num_blocks'])


def save_checkpoint(state_dict, meta, path):
    with atomic_path(path) as tmp:
        torch.save({'meta': meta, 'state_dict': state_dict}, tmp)


def dump_config(cfg, path):
    with atomic_path(path, suffix='.py') as tmp:
        cfg.dump(tmp)


@contextlib.contextmanager
def staged(work_dir: str, outputs: Sequence[str] = ()):
    """A temporary folder in ``work_dir`` whose files move into
    ``work_dir`` only when the block succeeds (else it is removed, and so
    is ``work_dir`` if this created it): a deployment is written whole or
    not at all. ``outputs``: names a deployment may write; those this one
    did not write are removed from ``work_dir`` (an earlier run's INT8 or
    SDK files do not stay beside a new fused model)."""
    created = not osp.isdir(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    stage = osp.abspath(tempfile.mkdtemp(prefix='.deploy-', dir=work_dir))
    try:
        yield stage
        written = os.listdir(stage)
        for entry in set(outputs) - set(written):
            stale = osp.join(work_dir, entry)
            if osp.isdir(stale) and not osp.islink(stale):
                shutil.rmtree(stale)
            elif osp.lexists(stale):
                os.remove(stale)
        for entry in sorted(written):
            target = osp.join(work_dir, entry)
            if osp.isdir(target) and not osp.islink(target):
                shutil.rmtree(target)  # a folder of an earlier run
            os.replace(osp.join(stage, entry), target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            shutil.rmtree(work_dir, ignore_errors=True)
        raise
    shutil.rmtree(stage, ignore_errors=True)


def _moved(value, stage: str, work_dir: str):
    """``value`` with paths inside ``stage`` pointing into ``work_dir``."""
    if isinstance(value, dict):
        return {k: _moved(v, stage, work_dir) for k, v in value.items()}
    if value == stage:
        return work_dir
    if isinstance(value, str) and value.startswith(stage + os.sep):
        return osp.join(work_dir, osp.relpath(value, stage))
    return value


def deploy(config: str,
           checkpoint: str,
           work_dir: str,
           images: Optional[Sequence[str]] = None,
           num_images: int = 8,
           tolerance: float = 1e-4,
           onnx: bool = False,
           fmt: str = 'repnas',
           cfg_options: Optional[dict] = None,
           deploy_cfg: Optional[str] = None,
           export_tolerance: float = 1e-3,
           int8: bool = False,
           int8_tolerance: float = 1.0,
           calib_images: int = 256,
           calib_method: str = 'minmax',
           log: Callable[[str], None] = print) -> dict:
    """Load, fuse, verify and write a model; return what was measured.

    ``onnx=True`` then exports the fused model through mmdeploy with
    ``deploy_cfg`` (default: ``configs/deploy/``'s dynamic-shape ONNX
    Runtime config for the config's task) and checks the export in
    mmdeploy's ONNX Runtime backend and SDK (:func:`export_sdk`, within
    ``export_tolerance``). ``int8=True`` (implies ``onnx``) then quantizes
    the export (:func:`~.int8.export_int8`: ``calib_images`` training
    images, ``calib_method``) into ``work_dir/int8/`` and evaluates fp32
    and INT8 on the test set. Raises :class:`DeployError`, and
    writes nothing, when the fused model or the RepVGG copy differ from
    the training-time model by more than ``tolerance`` (relative), the
    export from PyTorch by more than ``export_tolerance``, or INT8's
    metric falls more than ``int8_tolerance`` points below fp32's.
    """
    cfg = read_config(config, cfg_options)
    name = osp.splitext(osp.basename(config))[0]
    onnx = onnx or int8
    if fmt == 'mmpretrain-repvgg':
        to_repvgg_config(cfg)  # refuse an ineligible model before any work
    if int8:
        from .int8 import CALIBRATION_METHODS
        if calib_method not in CALIBRATION_METHODS:
            raise DeployError(f'unknown calibration method {calib_method!r};'
                              f' methods are {", ".join(CALIBRATION_METHODS)}')
        if calib_images < 1:
            raise DeployError(f'calib_images must be at least 1, got '
                              f'{calib_images}')
    if onnx:  # refuse what cannot be exported before any work
        deploy_cfg = deploy_cfg or default_deploy_config(cfg)
    model, info = load_for_deploy(cfg, checkpoint)
    refconvs = count_refconvs(model)
    log(f'[deploy] loaded {checkpoint}: {len(named_odbbs(model))} ODBBs'
        + (f', {refconvs} RefConvs' if refconvs else '')
        + (', already fused' if info['already_fused'] else '')
        + (f', searched architecture of {info["searched_branches"]} '
           'branches' if 'searched_branches' in info else ''))

    batches = collect_batches(cfg, images, num_images)
    inputs = [model_inputs(model, b) for b in batches]
    reference = [raw_outputs(model, x) for x in inputs]
    fused = reparameterize_model(model)
    if onnx:
        refuse_unexportable(fused)
    error = relative_error(
        [t for x in inputs for t in raw_outputs(fused, x)],
        [t for r in reference for t in r])
    result = dict(fused_error=error, images=len(inputs))
    log(f'[deploy] verified on {len(inputs)} real image(s): fused vs '
        f'training-time, max relative error {error:.2e} (tolerance '
        f'{tolerance:g})')
    if error > tolerance:
        raise DeployError(f'the fused model differs from the training-time '
                          f'one: max relative error {error:.2e} > '
                          f'{tolerance:g}; nothing was written')
    outputs = SDK_FILES + (INT8_DIR, 'int8.md', f'{name}_repvgg.pth',
                           f'{name}_repvgg.py')
    with staged(work_dir, outputs) as stage:
        files, meta = _write_fused(cfg, fused, info, checkpoint, error,
                                   stage, name, log)
        result.update(files)
        if fmt == 'mmpretrain-repvgg':
            result.update(_write_repvgg(cfg, fused, meta, inputs,
                                        stage, name, tolerance, log))
        if onnx:
            paths = image_files(images)[:num_images] if images else \
                image_paths_of(batches)
            result.update(
                export_sdk(deploy_cfg, result['config'], result['checkpoint'],
                           paths, stage, export_tolerance, log))
        if int8:
            from .int8 import export_int8, table as int8_table
            result['int8'] = export_int8(
                deploy_cfg, result['config'], stage, calib_images,
                calib_method, int8_tolerance, paths, log)
            with atomic_path(osp.join(stage, 'int8.md')) as tmp:
                with open(tmp, 'w') as f:
                    f.write(int8_table(result['int8']))
        result = _moved(result, stage, osp.abspath(work_dir))
        write_json(result, osp.join(stage, 'deploy_result.json'))
        written = sorted(os.listdir(stage))
    log(f'[deploy] wrote {work_dir}: {", ".join(written)}')
    return result


def _write_fused(cfg, fused, info, checkpoint, error, work_dir, name, log):
    """The fused checkpoint and its deploy config, in ``work_dir``: their
    paths, and the checkpoint's meta."""
    from mmengine.config import Config
    meta = dict(info.get('meta', {}))
    meta['repnas_deploy'] = dict(source=osp.abspath(checkpoint),
                                 fused_error=error)
    fused_ckpt = osp.join(work_dir, f'{name}_fused.pth')
    fused_cfg = osp.join(work_dir, f'{name}_deploy.py')
    save_checkpoint(fused.state_dict(), meta, fused_ckpt)
    dump_config(deploy_config(cfg, fused), fused_cfg)
    # What we promise: the deploy config builds a model that loads the fused
    # checkpoint strictly.
    check = build_model_unchecked(Config.fromfile(fused_cfg))
    check.load_state_dict(fused.state_dict(), strict=True)
    log('[deploy] fused checkpoint and deploy config written (the config '
        'builds a model that loads the checkpoint strictly)')
    return dict(checkpoint=fused_ckpt, config=fused_cfg), meta


def _write_repvgg(cfg, fused, meta, inputs, work_dir, name, tolerance, log):
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
