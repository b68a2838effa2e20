"""RepNASHook: drives a SearchSpace from the mmengine Runner."""
import os.path as osp
from collections import Counter
from typing import Optional, Union

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from repnas_mm.rep import BRANCH_NAMES, ODBB
from repnas_mm.rep.arch import save_arch

from .bn_calibration import (bn_state, load_bn_state, load_tensors,
                             recalibrate_on_training_set)
from .distributed import require_unused_parameters, unwrap_model
from .figure import plot_architecture
from .optim import optimize_with_alpha, weights_optimizer
from .rng import global_rng_state, set_global_rng_state
from .space import SearchSpace
from .width_space import WidthSpace

AT_FIX = ('continue', 'reschedule', 'retrain')


@HOOKS.register_module()
class RepNASHook(Hook):
    """The RepNAS one-stage search (Algorithm 1) as a training hook.

    Every training iteration samples a mask of ``budget`` branches (logistic
    noise on alpha, global top-k) and straight-through gates, so one backward
    pass updates the weights (config's optimizer) and alpha (its own Adam,
    see ``RepNASOptimWrapperConstructor``).

    Args:
        budget (int | float): branches kept in all, a count ``C`` or a ratio
            of all legal branches.
        temperature (float): lambda of Eq. 11.
        warmup_epochs (int): first epochs train the weights only (masks are
            still sampled, alpha does not move).
        fix_epoch (int, optional): from this epoch on, the architecture is
            the deterministic top-k on alpha, alpha is frozen, and the
            searched network goes on training.
        seed (int): noise seed, the same on every rank (identical masks).
        arch_name (str, optional): written into architecture files; default:
            the backbone's ``arch_name``.
        bn_recalibration (int): before each validation of the search (not
            once the architecture is fixed), re-estimate the BN statistics
            for the evaluated architecture on this many training images
            (shared across sampled masks, the supernet's statistics fit no
            single one); the training statistics are put back after the
            validation, and the random states are untouched. 0: off.
        at_fix (str): what happens to the training at ``fix_epoch``:

            - ``'continue'``: the weights, their optimizer state and the
              learning-rate schedule carry on (the paper's one-stage run);
            - ``'reschedule'``: the weights carry on, the optimizer's
              scheduled values (lr, momentum) go back to their initial
              values, so the config's schedulers that begin at
              ``fix_epoch`` run a second schedule;
            - ``'retrain'``: as ``'reschedule'``, and the weights (BN
              statistics included) go back to those the run started from
              and their optimizer state is cleared: the epochs from
              ``fix_epoch`` on train the searched architecture from the
              start, as a separate run of it would (docs/ablation.md
              measures why this is the default of the small-data configs).

            With ``'reschedule'`` and ``'retrain'`` no scheduler may run
            across ``fix_epoch`` (split it at ``begin=fix_epoch``).
        noise (bool): sample masks with logistic noise on alpha (Eq. 11);
            ``False`` ranks alpha itself (an ablation).
        gate (str): ``'straight_through'`` (Eq. 12, the default) or
            ``'soft'`` (kept branches scaled by their score in training; an
            ablation), see :class:`SearchSpace`.
        widths (dict, optional): also search every layer's width under a
            latency budget (:class:`~.width_space.WidthSpace`): ``table``
            (a latency table file, ``tools/latency_table.py``),
            ``input_size`` (the size it was measured at), ``budget_ratio``
            (of the full-width network's predicted latency) or
            ``budget_ms``; optional ``floor``, ``multiple``,
            ``temperature``, ``noise``, and ``runtime`` (the key the table
            must have: ``dict(device=, threads=, batch=)``). The widths
            are fixed with the branches, recorded with them (``widths``
            and ``channels`` in the architecture), and trained by alpha's
            optimizer.
    """
    priority = 'ABOVE_NORMAL'

    def __init__(self,
                 budget: Union[int, float],
                 temperature: float = 1.0,
                 warmup_epochs: int = 0,
                 fix_epoch: Optional[int] = None,
                 seed: int = 0,
                 arch_name: Optional[str] = None,
                 bn_recalibration: int = 512,
                 at_fix: str = 'continue',
                 noise: bool = True,
                 gate: str = 'straight_through',
                 widths: Optional[dict] = None):
        if at_fix not in AT_FIX:
            raise ValueError(f'at_fix must be one of {AT_FIX}, got '
                             f'{at_fix!r}')
        if at_fix != 'continue' and fix_epoch is None:
            raise ValueError(f"at_fix={at_fix!r} needs a fix_epoch")
        self.budget = budget
        self.temperature = temperature
        self.warmup_epochs = warmup_epochs
        self.fix_epoch = fix_epoch
        self.seed = seed
        self.arch_name = arch_name
        self.bn_recalibration = bn_recalibration
        self.at_fix = at_fix
        self.noise = noise
        self.gate = gate
        self.space: Optional[SearchSpace] = None
        self.width_cfg = dict(widths) if widths else None
        self.widths: Optional[WidthSpace] = None
        self._training = False
        self._train_bn: Optional[dict] = None  # put back after validation
        self._loaded: Optional[dict] = None  # a checkpoint's search state
        # at_fix='retrain': the weights the run started from, until fixed.
        self._start: Optional[dict] = None

    # -- set-up ---------------------------------------------------------------
    def before_run(self, runner):
        model = unwrap_model(runner.model)
        self.space = SearchSpace.for_model(model)
        self.space.configure(self.budget, self.temperature, self.seed,
                             self.noise, self.gate)
        if self.arch_name is None:
            backbone = getattr(model, 'backbone', None)
            self.arch_name = getattr(backbone, 'arch_name', None)
        wrapper = runner.optim_wrapper
        if hasattr(wrapper, 'param_groups') and not any(
                p is self.space.alpha for g in wrapper.param_groups
                for p in g['params']):
            raise RuntimeError(
                "RepNASHook: alpha is not optimized; set optim_wrapper's "
                "constructor='RepNASOptimWrapperConstructor'")
        require_unused_parameters(runner, 'RepNASHook',
                                   'pruned branches get no gradient')
        if self.width_cfg is not None and self.widths is None:
            self.widths = self._width_space(model)
            if hasattr(wrapper, 'param_groups'):  # built: training
                optimize_with_alpha(wrapper, self.widths.beta)
            full = self.widths.predicted_ms(self.widths.full)
            print_log(
                f'RepNAS widths: {len(self.widths.full)} layers, budget '
                f'{self.widths.budget_ms:.3f} ms of {full:.3f} ms predicted '
                'at full width', logger='current')
        print_log(
            f'RepNAS: {len(self.space.blocks)} blocks, '
            f'{self.space.num_branches} legal branches, budget '
            f'{self.space.budget}, temperature {self.temperature}, warm-up '
            f'{self.warmup_epochs} epoch(s), fixed from epoch '
            f'{self.fix_epoch}'
            + ('' if self.at_fix == 'continue' else f' ({self.at_fix})'),
            logger='current')

    def _width_space(self, model) -> WidthSpace:
        space = WidthSpace.from_config(
            model, dict(dict(seed=self.seed), **self.width_cfg))
        return space.to(next(model.parameters()).device)

    def _check_schedulers(self, runner):
        iters = len(runner.train_dataloader)
        for scheduler in _schedulers(runner.param_schedulers):
            fix = self.fix_epoch if scheduler.by_epoch else \
                self.fix_epoch * iters
            if scheduler.begin < fix < scheduler.end:
                raise ValueError(
                    f'RepNASHook(at_fix={self.at_fix!r}): '
                    f'{type(scheduler).__name__} runs across fix_epoch '
                    f'{self.fix_epoch} (begin {scheduler.begin}, end '
                    f'{scheduler.end}); give the searched network its own '
                    f'schedulers from begin={self.fix_epoch}')

    # -- training -------------------------------------------------------------
    def before_train_epoch(self, runner):
        epoch = runner.epoch
        if self.fix_epoch is not None and epoch >= self.fix_epoch:
            if self.widths is not None and not self.widths.fixed:
                self.widths.fix()
                print_log(f'RepNAS widths fixed at epoch {epoch}: '
                          f'{self._widths_summary()}', logger='current')
            if not self.space.fixed:
                self.space.fix()
                print_log(
                    f'RepNAS: architecture fixed at epoch {epoch}: '
                    f'{self._kept_summary(self.space.mask)}',
                    logger='current')
                if self.at_fix == 'retrain':
                    self._rewind(runner)
            self._start = None
        else:
            self.space.alpha.requires_grad_(epoch >= self.warmup_epochs)
            if self.widths is not None:
                self.widths.beta.requires_grad_(epoch >= self.warmup_epochs)

    def _rewind(self, runner):
        """Weights (and BN statistics) back to the run's start; their
        optimizer state cleared. Branch masks stay the fixed ones."""
        if self._start is None:
            raise RuntimeError(
                "RepNASHook(at_fix='retrain'): the weights the run started "
                'from are unknown (resumed from a checkpoint saved without '
                'them?)')
        load_tensors(unwrap_model(runner.model), self._start)
        weights_optimizer(runner.optim_wrapper).state.clear()
        print_log(
            f'RepNAS: the searched network is retrained from the start: '
            f'{len(self._start)} weight tensors rewound, optimizer state '
            'cleared', logger='current')

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.space.step()
        if self.widths is not None:
            self.widths.step()

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if self.at_fix != 'continue' and \
                runner.epoch == self.fix_epoch - 1 and \
                batch_idx == len(runner.train_dataloader) - 1:
            # Before ParamSchedulerHook (priority LOW) steps into fix_epoch.
            self._reset_scheduled_values(runner)
        hub = runner.message_hub
        hub.update_scalar('train/repnas_kept', int(self.space.mask.sum()))
        hub.update_scalar('train/repnas_alpha_mean',
                          float(self.space.alpha.detach().mean()))
        if self.widths is not None:
            hub.update_scalar('train/repnas_predicted_ms',
                              self.widths.predicted_ms(self.widths.widths))

    def _reset_scheduled_values(self, runner):
        groups = weights_optimizer(runner.optim_wrapper).param_groups
        reset = set()
        for group in groups:
            for key in list(group):
                if key.startswith('initial_') and key[8:] in group:
                    group[key[8:]] = group[key]
                    reset.add(key[8:])
        print_log(
            f'RepNAS: {", ".join(sorted(reset)) or "nothing"} back to the '
            f'initial value(s) for the searched network\'s schedule from '
            f'epoch {self.fix_epoch}', logger='current')

    def architecture(self):
        """The searched architecture now: branches, and widths if searched
        (``widths`` and the kept ``channels`` of every block)."""
        arch = self.space.architecture(self.arch_name)
        if self.widths is not None:
            keep = self.widths.keep if self.widths.fixed else \
                self._best_keep()
            arch.extra.update(
                widths=[len(k) for k in keep],
                channels=[k.tolist() for k in keep],
                predicted_ms=round(self.widths.predicted_ms(
                    [len(k) for k in keep]), 4),
                latency_budget_ms=round(self.widths.budget_ms, 4))
        return arch

    def _best_keep(self):
        scores = self.widths.scores(noise=False)
        return self.widths.keep_for(scores, self.widths.widths_for(scores))

    def _widths_summary(self) -> str:
        widths = self.widths.widths
        return (f'{widths} ({sum(widths)} of {sum(self.widths.full)} '
                f'channels), predicted {self.widths.predicted_ms(widths):.3f}'
                f' ms (budget {self.widths.budget_ms:.3f})')

    def after_train_epoch(self, runner):
        arch = self.architecture()
        print_log(
            f'RepNAS epoch {runner.epoch + 1}: top-{arch.budget} on alpha '
            f'keeps {self._kept_summary(self.space.top_k(self.space.alpha))}'
            f'; alpha {self._histogram()}',
            logger='current')
        if is_main_process():
            save_arch(
                arch,
                osp.join(runner.work_dir, 'arch',
                         f'epoch_{runner.epoch + 1}.json'))

    def after_train(self, runner):
        self._training = False
        arch = self.architecture()
        if is_main_process():
            path = osp.join(runner.work_dir, 'searched_arch.json')
            save_arch(arch, path)
            figure = plot_architecture(
                arch, osp.join(runner.work_dir, 'searched_arch.png'))
            print_log(
                f'RepNAS: searched architecture ({arch.num_branches} '
                f'branches) written to {path}; figure: {figure}',
                logger='current')

    # -- evaluation uses the current best architecture ------------------------
    def before_val_epoch(self, runner):
        if self.space is None:
            return
        self.space.apply_best()
        if self.widths is not None:
            self.widths.apply_best()
        if self._training and self.bn_recalibration and not self.space.fixed:
            self._recalibrate(runner)

    def after_val_epoch(self, runner, metrics=None):
        if self._train_bn is not None:
            load_bn_state(unwrap_model(runner.model), self._train_bn)
            self._train_bn = None

    def _recalibrate(self, runner):
        self._train_bn = bn_state(unwrap_model(runner.model))
        seen = recalibrate_on_training_set(
            runner, self.bn_recalibration,
            seed=self.seed * 1000003 + runner.epoch)
        print_log(
            f'RepNAS: BN statistics re-estimated on {seen} training images '
            'for the evaluated architecture', logger='current')

    def before_test_epoch(self, runner):
        if self.space is not None:
            self.space.apply_best()
        if self.widths is not None:
            self.widths.apply_best()

    # -- checkpoints ----------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint):
        arch = self.architecture()
        checkpoint['repnas'] = dict(
            space=self.space.state_dict(),
            architecture=arch.to_dict(),
            rng=global_rng_state())
        if self.widths is not None:
            checkpoint['repnas']['widths'] = self.widths.state_dict()
        if self._start is not None:  # at_fix='retrain', not fixed yet
            checkpoint['repnas']['start_weights'] = self._start
        # Each block's saved branch mask is the searched architecture, so
        # loaders that fuse after loading (mmdeploy) fuse that.
        state = checkpoint.get('state_dict', {})
        for name, kept in zip(self.space.block_names, arch.blocks):
            key = f'{name}.{ODBB.MASK}'
            if key in state:
                state[key] = torch.tensor([n in kept for n in BRANCH_NAMES])

    def after_load_checkpoint(self, runner, checkpoint):
        """Any loaded checkpoint's alpha comes in (tools/test.py evaluates
        the architecture it chose); the rest waits for :meth:`before_train`.
        """
        state = checkpoint.get('repnas')
        if state is None or self.space is None:
            return
        names = state['space']['_extra_state']['block_names']
        if names != self.space.block_names:
            print_log('RepNAS: the loaded checkpoint was searched on other '
                      'blocks; alpha starts from zero', logger='current')
            return
        with torch.no_grad():
            self.space.alpha.copy_(state['space']['alpha'])
            if self.widths is not None and 'widths' in state:
                # Frozen after fix_epoch: evaluating it recovers the widths.
                self.widths.beta.copy_(state['widths']['beta'])
        self._loaded = state

    def before_train(self, runner):
        self._training = True
        if self.at_fix != 'continue':  # training only: built schedulers
            self._check_schedulers(runner)
        self._restore_loaded(runner)
        if self.at_fix == 'retrain' and not self.space.fixed and \
                runner.iter == 0:
            self._start = _start_weights(unwrap_model(runner.model))

    def _restore_loaded(self, runner):
        """``--resume`` (the Runner restored a later iteration): the whole
        search continues; ``load_from`` (iteration 0): alpha was
        warm-started, e.g. a detector continuing a classification search."""
        state, self._loaded = self._loaded, None
        if state is None:
            return
        if runner.iter > 0:
            self.space.load_state_dict(state['space'])
            if self.widths is not None:
                if 'widths' not in state:
                    raise ValueError('RepNASHook(widths=...): the resumed '
                                     'checkpoint has no width search')
                self.widths.load_state_dict(state['widths'])
            self._start = state.get('start_weights')
            # The data pipeline's random draws continue where they stopped.
            set_global_rng_state(state['rng'])
        else:
            print_log('RepNAS: alpha warm-started from the loaded checkpoint',
                      logger='current')

    # -- logging helpers ------------------------------------------------------
    def _kept_summary(self, mask) -> str:
        counts = Counter()
        for block, sl in zip(self.space.blocks, self.space.slices):
            for name, keep in zip(block.branch_names, mask[sl].tolist()):
                counts[name] += keep
        parts = ', '.join(f'{n} {counts[n]}' for n in BRANCH_NAMES)
        return f'{int(mask.sum())} branches ({parts})'

    def _histogram(self, bins: int = 8) -> str:
        alpha = self.space.alpha.detach().cpu().numpy()
        counts, edges = np.histogram(alpha, bins=bins)
        return (f'in [{edges[0]:.4f}, {edges[-1]:.4f}], histogram '
                + ' '.join(str(c) for c in counts))


def _schedulers(schedulers) -> list:
    """The runner's param schedulers as one list (list, dict or None)."""
    if schedulers is None:
        return []
    if isinstance(schedulers, dict):
        return [s for group in schedulers.values() for s in group]
    return list(schedulers)


def _start_weights(model) -> dict:
    """CPU copies of the weights and buffers, without the branch masks
    (those stay the fixed architecture's when rewound)."""
    return {
        key: value.detach().cpu().clone()
        for key, value in (*model.named_parameters(),
                           *model.named_buffers())
        if not key.endswith(ODBB.MASK)
    }
