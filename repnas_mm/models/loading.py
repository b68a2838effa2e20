"""Weights from a checkpoint into a built model, all or nothing.

mmengine's loaders warn about missing keys and go on; a searched network
with a silently random block is worse than an error. Here every tensor of
the model's structure must be in the checkpoint with its shape (extra ones,
such as branches a search pruned, are ignored), or loading stops with one
line naming the first missing or mis-shaped tensor. Used by ``ODBBNet``'s
``init_cfg=dict(type='Pretrained')`` and by ``tools/deploy.py``.
"""
from typing import Optional

import torch.nn as nn

from repnas_mm.checkpoint import CheckpointError
from repnas_mm.rep.block import ODBB
from repnas_mm.rep.forms import forms_in_state
from repnas_mm.rep.quant import is_quantizer_key


class CheckpointMismatch(CheckpointError, ValueError):
    """A checkpoint whose tensors do not fit the model built for it."""


def holds_fused(state: dict) -> bool:
    """Whether a state dict is that of a fused (deploy) network."""
    return any(k.endswith('fused_conv.weight') for k in state)


def load_checked(module: nn.Module, state: dict, source: str,
                 target: str) -> int:
    """Load ``state`` into ``module`` strictly; return the unused tensors.

    ``source`` names the checkpoint and ``target`` the model in the error.
    """
    own = module.state_dict()
    # Checkpoints from before ODBBs saved their branch mask and form lack
    # them; the block keeps the branches it was built with. An fp32
    # checkpoint lacks a quantization-aware model's quantizers.
    optional = tuple('.' + key for key in ODBB.OPTIONAL)
    own = {k: v for k, v in own.items()
           if k in state or not (k.endswith(optional) or is_quantizer_key(k))}
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointMismatch(
            f'{source} does not match {target}: it lacks {len(missing)} of '
            f'its {len(own)} tensors, e.g. {missing[0]!r} (a checkpoint of '
            'another arch or config, or of a search that kept other '
            'branches?)')
    for key, value in own.items():
        if state[key].shape != value.shape:
            raise CheckpointMismatch(
                f'{source} does not match {target}: {key!r} has shape '
                f'{tuple(state[key].shape)} there, {tuple(value.shape)} here '
                '(another arch?)')
    try:
        module.load_state_dict({k: state[k] for k in own},
                               strict=len(own) == len(module.state_dict()))
    except ValueError as exc:  # e.g. a branch mask that keeps nothing
        raise CheckpointMismatch(f'{source} does not match {target}: '
                                 f'{exc}') from None
    return len(set(state) - set(own))


def load_pretrained(net: nn.Module,
                    checkpoint: str,
                    prefix: Optional[str] = None) -> str:
    """Load an ODBBNet's weights from a (classification) checkpoint.

    ``prefix`` (e.g. ``'backbone.'``) selects the backbone's tensors. A
    multi-branch checkpoint loads into a fused (``deploy=True``) network
    through its multi-branch twin, which is loaded and fused. Returns what
    was done, for the log.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    loaded = CheckpointLoader.load_checkpoint(
        checkpoint, map_location='cpu', logger='current')
    state = loaded.get('state_dict', loaded)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items()
                 if k.startswith(prefix)}
        if not state:
            raise CheckpointMismatch(
                f'{checkpoint} has no tensor under the prefix {prefix!r}')
    fused = holds_fused(state)
    if fused and not net.deploy:
        raise CheckpointMismatch(
            f'{checkpoint} holds a fused (deploy) network: it cannot '
            'initialise a multi-branch ODBBNet; build the backbone with '
            'deploy=True')
    forms = forms_in_state(state)
    if len(forms) > 1:
        raise CheckpointMismatch(f'{checkpoint} holds ODBBs of several forms '
                                 f'({", ".join(sorted(forms))})')
    form = forms.pop() if forms else net.form
    if not fused and not net.deploy and form != net.form:
        raise CheckpointMismatch(
            f"{checkpoint} holds ODBBs of form='{form}': build the backbone "
            "so (or with deploy=True)")
    target = net
    if net.deploy and not fused:
        target = type(net)(
            dict(net.arch, name=net.arch_name),
            in_channels=net.stem.conv.in_channels,
            branches=[b.branch_names for b in net.blocks()],
            kernel_size=net.kernel_size,
            # A shared main kernel is stored on the ODBB itself, and so is
            # the one BN of an online or quantization-friendly block.
            weight_sharing=any(k.endswith('.conv.weight') for k in state),
            form=form)
    unused = load_checked(target, state, checkpoint,
                          f'ODBBNet-{net.arch_name} with this architecture')
    if target is not net:
        target.switch_to_deploy()
        net.load_state_dict(target.state_dict(), strict=True)
    return (f'loaded {checkpoint}'
            + (f' (prefix {prefix!r})' if prefix else '')
            + (', fused' if target is not net else '')
            + (f'; {unused} tensors of it are not part of this structure '
               '(pruned branches)' if unused else ''))
