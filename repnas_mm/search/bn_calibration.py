"""BatchNorm statistics for the architecture being evaluated.

A supernet's BN running statistics average over every mask sampled in
training, not over the one architecture a validation evaluates, so its
numbers mislead. One-shot NAS methods (SPOS, Once-for-All) re-estimate the
statistics for the evaluated architecture on a few hundred training images
before evaluating it; these helpers do that and put the training statistics
back afterwards, so evaluation never changes training.
"""
from typing import Dict, Iterable

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

BNState = Dict[str, torch.Tensor]


def bn_state(model: nn.Module) -> BNState:
    """Copies of every BN buffer (running mean/var, batch count)."""
    return {
        f'{name}.{key}': buf.clone()
        for name, m in model.named_modules() if isinstance(m, _BatchNorm)
        for key, buf in m.named_buffers(recurse=False) if buf is not None
    }


def load_tensors(model: nn.Module, state: Dict[str, torch.Tensor]):
    """Copy ``state`` (names of parameters or buffers -> tensors) into the
    model's own tensors, in place (optimizers keep their references)."""
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    with torch.no_grad():
        for key, value in state.items():
            tensors[key].copy_(value)


def load_bn_state(model: nn.Module, state: BNState):
    """Put back what :func:`bn_state` copied."""
    load_tensors(model, state)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable,
                   num_images: int) -> int:
    """Re-estimate every BN's running statistics on ``num_images`` images.

    ``batches`` yields data batches of an OpenMMLab model (what a training
    dataloader yields); they go through ``model.data_preprocessor`` and the
    network (``mode='tensor'``) in training mode, without gradients. The
    statistics are the cumulative average over the batches (momentum
    ``None``), starting from reset buffers. Returns the number of images
    used (fewer if ``batches`` runs out). The model is left in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    seen = 0
    try:
        for batch in batches:
            data = model.data_preprocessor(batch, True)
            model(data['inputs'], data.get('data_samples'), mode='tensor')
            seen += len(data['inputs'])
            if seen >= num_images:
                break
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.eval()
    return seen


def recalibrate_on_training_set(runner, num_images: int, seed: int) -> int:
    """:func:`recalibrate_bn` for the runner's model on ``num_images``
    training images, drawn (shuffled with ``seed``) through a loader of
    its own: the training iterator and its workers stay as they are, every
    rank sees the same images, and the global random states (augmentation
    draws from them) are put back afterwards."""
    from .distributed import unwrap_model
    from .rng import global_rng_state, set_global_rng_state
    train = runner.train_dataloader
    loader = torch.utils.data.DataLoader(
        train.dataset,
        batch_size=train.batch_size or 1,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=train.collate_fn,
        num_workers=0)
    rng = global_rng_state()
    try:
        return recalibrate_bn(unwrap_model(runner.model), loader, num_images)
    finally:
        set_global_rng_state(rng)


__all__ = ['bn_state', 'load_bn_state', 'load_tensors', 'recalibrate_bn',
           'recalibrate_on_training_set']
