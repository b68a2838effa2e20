"""Build a model for deployment: structure first, then weights, then fuse.

Every problem a user can cause (a missing or foreign checkpoint, a config
without ODBBs) is a :class:`DeployError` (or, for a file torch cannot read,
a ``CheckpointError``; for one that does not fit, a ``CheckpointMismatch``)
with one line that says what to do.
"""
import os.path as osp

import torch.nn as nn

from repnas_mm.checkpoint import kept_branches, recorded_architecture
from repnas_mm.errors import UserError
from repnas_mm.models.loading import holds_fused, load_checked
from repnas_mm.rep import RefConv, named_odbbs, reparameterize_model


class DeployError(UserError):
    """A problem with the inputs of a deployment, told in one line."""


def build_model_unchecked(cfg) -> nn.Module:
    """The config's model in its registry scope (it need not have ODBBs),
    quantization-aware if the config says so (its ``quantize``)."""
    from mmengine.registry import MODELS, init_default_scope
    from repnas_mm.quant import prepare_from_config
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    return prepare_from_config(MODELS.build(cfg.model), cfg)


def build_model(cfg) -> nn.Module:
    """The config's model, which must contain ODBBs or RefConvs (no
    weights loaded)."""
    try:
        model = build_model_unchecked(cfg)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise DeployError(f'cannot build the model of {cfg.filename}: '
                          f'{exc}') from None
    if not named_odbbs(model) and not count_refconvs(model):
        raise DeployError(
            f'the model of {cfg.filename} has no ODBB or RefConv: there is '
            'nothing to fuse (is this a repnas_mm config?)')
    return model


def count_refconvs(model: nn.Module) -> int:
    return sum(isinstance(m, RefConv) for m in model.modules())


def is_fused(model: nn.Module) -> bool:
    return not named_odbbs(model, fused=False)


def _apply_structure(model, structure: dict) -> int:
    """Keep only the branches a search (or DyRep) left in every block."""
    named = named_odbbs(model)
    if list(structure) != list(named):
        raise DeployError(
            'the checkpoint\'s architecture names other blocks than the '
            'config\'s model (was it trained with another config?)')
    for name, branches in structure.items():
        if named[name].fused_conv is None:
            named[name].active = branches
    return sum(len(b) for b in structure.values())


def load_for_deploy(cfg, checkpoint: str):
    """(model in eval mode, info) with the checkpoint's weights loaded.

    A RepNAS or DyRep checkpoint keeps only the branches its run left
    active (the structure comes before the weights); a fused
    checkpoint loads into the fused structure (deploying it again is a
    no-op). Mismatching checkpoints raise :class:`DeployError`.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    if not osp.isfile(checkpoint):
        raise DeployError(f'checkpoint not found: {checkpoint}')
    model = build_model(cfg)
    # An unreadable or unsafe file raises CheckpointError (a UserError).
    loaded = CheckpointLoader.load_checkpoint(
        checkpoint, map_location='cpu', logger='current')
    state = loaded.get('state_dict', loaded)
    info = dict(already_fused=holds_fused(state))
    if info['already_fused'] and not is_fused(model):
        reparameterize_model(model, inplace=True)
    info['unused_tensors'] = load_checked(model, state, checkpoint,
                                          f'the model of {cfg.filename}')
    # The searched structure a RepNAS or DyRep run recorded beside the
    # weights has the last word (the blocks' saved branch masks say the
    # same in checkpoints of this version; older ones have none).
    structure = None if info['already_fused'] else kept_branches(loaded)
    if structure is not None:
        info['searched_branches'] = _apply_structure(model, structure)
    # A width search's kept channels: the model is gated to them (what it
    # trained as), and ships narrow (workflow.deploy).
    arch = None if info['already_fused'] else recorded_architecture(loaded)
    channels = (arch or {}).get('channels')
    if channels is not None:
        _apply_channels(model, channels)
        info['channels'] = channels
    info['meta'] = loaded.get('meta', {})
    return model.eval(), info


def _apply_channels(model, channels):
    from repnas_mm.models.backbones.odbbnet import ODBBNet
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, ODBBNet) or \
            len(channels) != len(backbone.widths):
        raise DeployError(
            'the checkpoint records searched widths for '
            f'{len(channels)} layers; the config\'s model has no ODBBNet '
            'backbone with as many (was it trained with another config?)')
    backbone.set_channels(channels)
