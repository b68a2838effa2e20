"""Test-only hooks that record what a Runner did (loaded by tests' configs)."""
import json

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class ResumeProbeHook(Hook):
    """Saves the iteration, epoch and optimizer state right before training."""

    def __init__(self, out):
        self.out = out

    def before_train(self, runner):
        torch.save(
            dict(
                iter=runner.iter,
                epoch=runner.epoch,
                optimizer=runner.optim_wrapper.state_dict()), self.out)


@HOOKS.register_module()
class MaskProbeHook(Hook):
    """Appends every iteration's search mask and alpha to ``out``.rank<N>.jsonl."""
    priority = 'LOW'  # after RepNASHook and the optimizer step

    def __init__(self, out):
        self.out = out

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        from repnas_mm.search import SearchSpace
        model = runner.model.module if hasattr(runner.model,
                                               'module') else runner.model
        space = SearchSpace.for_model(model)
        record = dict(
            iter=runner.iter,
            mask=space.mask.int().tolist(),
            alpha=space.alpha.detach().cpu().tolist(),
            online=all(block.form == 'online' for block in space.blocks))
        widths = next((h.widths for h in runner.hooks
                       if type(h).__name__ == 'RepNASHook'), None)
        if widths is not None:  # a width search's channels and beta
            record.update(channels=[k.tolist() for k in widths.keep],
                          beta=widths.beta.detach().cpu().tolist())
        with open(f'{self.out}.rank{get_rank()}.jsonl', 'a') as f:
            f.write(json.dumps(record) + '\n')


@HOOKS.register_module()
class DyRepProbeHook(Hook):
    """Appends every epoch's DyRep structure to ``out``.rank<N>.jsonl."""
    priority = 'LOW'  # after DyRepHook

    def __init__(self, out):
        self.out = out

    def after_train_epoch(self, runner):
        hook = next(h for h in runner.hooks if type(h).__name__ ==
                    'DyRepHook')
        with open(f'{self.out}.rank{get_rank()}.jsonl', 'a') as f:
            f.write(json.dumps(dict(epoch=runner.epoch,
                                    structure=hook.policy.structure())) +
                    '\n')


@HOOKS.register_module()
class WeightsProbeHook(Hook):
    """Appends, before training and before every epoch (after RepNASHook),
    a digest of the model's weights and BN statistics, the weights' lr and
    how many parameters have optimizer state, to ``out``.jsonl."""
    priority = 'LOW'

    def __init__(self, out):
        self.out = out

    def _record(self, runner, epoch):
        model = runner.model.module if hasattr(runner.model,
                                               'module') else runner.model
        from repnas_mm.search.optim import weights_optimizer
        weights = weights_optimizer(runner.optim_wrapper)
        record = dict(
            epoch=epoch,
            iter=runner.iter,
            weights=sum(float(p.detach().double().sum())
                        for p in model.parameters()),
            bn=sum(float(b.double().sum()) for n, b in model.named_buffers()
                   if 'running' in n),
            lr=weights.param_groups[0]['lr'],
            state=len(weights.state))
        with open(f'{self.out}.jsonl', 'a') as f:
            f.write(json.dumps(record) + '\n')

    def before_train(self, runner):
        self._record(runner, 'start')

    def before_train_epoch(self, runner):
        self._record(runner, runner.epoch)
