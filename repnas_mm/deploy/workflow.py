"""Fuse, verify, export: the steps of ``tools/deploy.py`` as one function.

:func:`deploy` runs named steps: refuse what cannot work before any work
(:func:`_refuse_early`), load (:func:`~.model.load_for_deploy`), fuse and
verify (:func:`_fuse_and_verify`), then, in a staging folder moved into
place only when everything passed (:func:`~.staging.staged`): write the
fused checkpoint and its config (:func:`_write_fused`), optionally the
stock RepVGG copy (:func:`~.interop.write_repvgg`), the mmdeploy export
(:func:`~.mmdeploy_export.export_sdk`) and INT8 (:func:`_write_int8`).
"""
import os
import os.path as osp
from typing import Callable, Optional, Union

from repnas_mm.atomic import atomic_path
from repnas_mm.config import read_config
from repnas_mm.rep import named_odbbs, reparameterize_model
from repnas_mm.rep.quant import (act_quantizers, set_quantization,
                                 strip_quantization)

from .fused_config import deploy_config
from .int8 import INT8_DIR
from .interop import to_repvgg_config, write_repvgg
from .mmdeploy_export import (SDK_FILES, default_deploy_config, export_sdk,
                              image_paths_of)
from .model import (DeployError, build_model_unchecked, count_refconvs,
                    load_for_deploy)
from .onnx import refuse_unexportable, write_json
from .options import ExportOptions, Int8Options, VerifyOptions, as_options
from .staging import dump_config, moved, save_checkpoint, staged
from .verify import (collect_batches, image_files, model_inputs, raw_outputs,
                     relative_error)


def deploy(config: str,
           checkpoint: str,
           work_dir: str,
           verify: Optional[VerifyOptions] = None,
           export: Union[ExportOptions, bool, None] = None,
           int8: Union[Int8Options, bool, None] = None,
           fmt: str = 'repnas',
           cfg_options: Optional[dict] = None,
           log: Callable[[str], None] = print) -> dict:
    """Load, fuse, verify and write a model; return what was measured.

    ``verify`` (:class:`~.options.VerifyOptions`, default: its defaults)
    says on which images and within which tolerance the fused model must
    compute what the training-time one does. ``export``
    (:class:`~.options.ExportOptions`, or True for its defaults) then
    exports the fused model through mmdeploy and checks the export in
    mmdeploy's ONNX Runtime backend and SDK. ``int8``
    (:class:`~.options.Int8Options`, or True; implies ``export``) then
    quantizes the export (:func:`~.int8.export_int8`) into
    ``work_dir/int8/`` and evaluates fp32 and INT8 on the test set.
    ``fmt='mmpretrain-repvgg'`` also writes a stock RepVGG deploy copy.
    Raises :class:`DeployError`, and writes nothing, when the fused model
    or the RepVGG copy differ from the training-time model by more than
    ``verify.tolerance`` (relative), the export from PyTorch by more than
    ``export.tolerance``, or INT8's metric falls more than
    ``int8.tolerance`` points below fp32's.
    """
    verify = verify or VerifyOptions()
    int8 = as_options(int8, Int8Options)
    export = as_options(export, ExportOptions) or (
        ExportOptions() if int8 else None)
    cfg = read_config(config, cfg_options)
    name = osp.splitext(osp.basename(config))[0]
    deploy_cfg = _refuse_early(cfg, fmt, export)
    model, info = load_for_deploy(cfg, checkpoint)
    _log_loaded(model, info, checkpoint, log)
    fused, batches, inputs, result = _fuse_and_verify(
        cfg, model, verify, export is not None, log)
    outputs = SDK_FILES + (INT8_DIR, 'int8.md', f'{name}_repvgg.pth',
                           f'{name}_repvgg.py')
    with staged(work_dir, outputs) as stage:
        files, meta = _write_fused(cfg, fused, info, checkpoint,
                                   result['fused_error'], stage, name, log)
        result.update(files)
        if fmt == 'mmpretrain-repvgg':
            result.update(write_repvgg(cfg, fused, meta, inputs, stage, name,
                                       verify.tolerance, log))
        if export is not None:
            paths = image_files(verify.images)[:verify.num_images] \
                if verify.images else image_paths_of(batches)
            result.update(
                export_sdk(deploy_cfg, result['config'], result['checkpoint'],
                           paths, stage, export.tolerance, log))
        if int8 is not None:
            result['int8'] = _write_int8(deploy_cfg, result['config'], stage,
                                         int8, paths, log, model)
        result = moved(result, stage, osp.abspath(work_dir))
        write_json(result, osp.join(stage, 'deploy_result.json'))
        written = sorted(os.listdir(stage))
    log(f'[deploy] wrote {work_dir}: {", ".join(written)}')
    return result


def _refuse_early(cfg, fmt: str, export: Optional[ExportOptions]):
    """Refuse an ineligible RepVGG copy or export before any work; the
    mmdeploy deploy config to export with (None without export)."""
    if fmt == 'mmpretrain-repvgg':
        to_repvgg_config(cfg)
    if export is None:
        return None
    return export.deploy_cfg or default_deploy_config(cfg)


def _log_loaded(model, info: dict, checkpoint: str, log):
    refconvs = count_refconvs(model)
    log(f'[deploy] loaded {checkpoint}: {len(named_odbbs(model))} ODBBs'
        + (f', {refconvs} RefConvs' if refconvs else '')
        + (', already fused' if info['already_fused'] else '')
        + (f', searched architecture of {info["searched_branches"]} '
           'branches' if 'searched_branches' in info else ''))


def _fuse_and_verify(cfg, model, verify: VerifyOptions, exporting: bool,
                     log):
    """(fused copy, batches, model inputs, result) once the fused copy
    computes what ``model`` does on real images, within the tolerance. A
    width-searched backbone (its blocks gated to their kept channels) is
    fused narrow. A quantization-aware model is compared, and fused, as
    the fp32 model it is without its quantizers (its INT8 scales go into
    the INT8 model only: :func:`_write_int8`)."""
    batches = collect_batches(cfg, verify.images, verify.num_images)
    inputs = [model_inputs(model, b) for b in batches]
    set_quantization(model, False)
    try:
        reference = [raw_outputs(model, x) for x in inputs]
        fused = reparameterize_model(model)
    finally:
        set_quantization(model, True)
    fused = _narrow(strip_quantization(fused), log)
    if exporting:
        refuse_unexportable(fused)
    error = relative_error(
        [t for x in inputs for t in raw_outputs(fused, x)],
        [t for r in reference for t in r])
    log(f'[deploy] verified on {len(inputs)} real image(s): fused vs '
        f'training-time, max relative error {error:.2e} (tolerance '
        f'{verify.tolerance:g})')
    if error > verify.tolerance:
        raise DeployError(f'the fused model differs from the training-time '
                          f'one: max relative error {error:.2e} > '
                          f'{verify.tolerance:g}; nothing was written')
    return fused, batches, inputs, dict(fused_error=error,
                                        images=len(inputs))


def _narrow(fused, log):
    """The model with its width-searched backbone narrow (as it is when the
    backbone's blocks are not gated)."""
    from repnas_mm.models.backbones.odbbnet import ODBBNet
    from repnas_mm.models.widths import narrow_model
    backbone = getattr(fused, 'backbone', None)
    keep = backbone.kept_channels() if isinstance(backbone, ODBBNet) \
        else None
    if keep is None:
        return fused
    full = sum(backbone.widths)
    try:
        narrow_model(fused, keep)
    except ValueError as exc:
        raise DeployError(f'cannot ship the searched widths: {exc}') from None
    log(f'[deploy] searched widths: {fused.backbone.widths} '
        f'({sum(fused.backbone.widths)} of {full} channels)')
    return fused


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


def _write_int8(deploy_cfg, model_cfg, stage, options: Int8Options, images,
                log, model) -> dict:
    """INT8 of the export, evaluated, and its table (``int8.md``); with
    the scales ``model`` trained if it is quantization-aware."""
    from .int8 import export_int8, table
    from .qat_export import is_quantization_aware
    qat = model if is_quantization_aware(model) else None
    if qat is None and act_quantizers(model):
        raise DeployError('the model is quantization-aware but its '
                          'checkpoint has no trained scales (not calibrated: '
                          'was it trained with QATHook?)')
    result = export_int8(deploy_cfg, model_cfg, stage, options.calib_images,
                         options.calib_method, options.tolerance, images, log,
                         qat_model=qat, fp32_layers=options.fp32_layers)
    with atomic_path(osp.join(stage, 'int8.md')) as tmp:
        with open(tmp, 'w') as f:
            f.write(table(result))
    return result
