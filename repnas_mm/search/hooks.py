"""RepNASHook: drives a SearchSpace from the mmengine Runner."""
import os.path as osp
import random
from collections import Counter
from typing import Optional, Union

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from repnas_mm.rep import BRANCH_NAMES
from repnas_mm.rep.arch import save_arch

from .figure import plot_architecture
from .space import SearchSpace


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


def _require_unused_parameters(runner, hook: str, why: str):
    """DDP must tolerate parameters without gradient (skipped branches)."""
    ddp = runner.model
    if isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and \
            not ddp.find_unused_parameters:
        raise RuntimeError(
            f'{hook}: {why}; set model_wrapper_cfg=dict(type='
            "'MMDistributedDataParallel', find_unused_parameters=True)")


def _global_rng_state():
    state = dict(
        python=random.getstate(),
        numpy=np.random.get_state(),
        torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _set_global_rng_state(state):
    random.setstate(_as_tuple(state['python']))
    np.random.set_state(_as_tuple(state['numpy']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _as_tuple(obj):
    """random/np.random states are nested tuples; lists after a round trip."""
    return tuple(_as_tuple(v) if isinstance(v, list) else v for v in obj)


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
    """
    priority = 'ABOVE_NORMAL'

    def __init__(self,
                 budget: Union[int, float],
                 temperature: float = 1.0,
                 warmup_epochs: int = 0,
                 fix_epoch: Optional[int] = None,
                 seed: int = 0,
                 arch_name: Optional[str] = None):
        self.budget = budget
        self.temperature = temperature
        self.warmup_epochs = warmup_epochs
        self.fix_epoch = fix_epoch
        self.seed = seed
        self.arch_name = arch_name
        self.space: Optional[SearchSpace] = None

    # -- set-up ----------------------------------------------------------------
    def before_run(self, runner):
        model = _unwrap(runner.model)
        self.space = SearchSpace.for_model(model)
        self.space.configure(self.budget, self.temperature, self.seed)
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
        _require_unused_parameters(runner, 'RepNASHook',
                                   'pruned branches get no gradient')
        print_log(
            f'RepNAS: {len(self.space.blocks)} blocks, '
            f'{self.space.num_branches} legal branches, budget '
            f'{self.space.budget}, temperature {self.temperature}, warm-up '
            f'{self.warmup_epochs} epoch(s), fixed from epoch '
            f'{self.fix_epoch}',
            logger='current')

    # -- training ----------------------------------------------------------------
    def before_train_epoch(self, runner):
        epoch = runner.epoch
        if self.fix_epoch is not None and epoch >= self.fix_epoch:
            if not self.space.fixed:
                self.space.fix()
                print_log(
                    f'RepNAS: architecture fixed at epoch {epoch}: '
                    f'{self._kept_summary(self.space.mask)}',
                    logger='current')
        else:
            self.space.alpha.requires_grad_(epoch >= self.warmup_epochs)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.space.step()

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        hub = runner.message_hub
        hub.update_scalar('train/repnas_kept', int(self.space.mask.sum()))
        hub.update_scalar('train/repnas_alpha_mean',
                          float(self.space.alpha.detach().mean()))

    def after_train_epoch(self, runner):
        arch = self.space.architecture(self.arch_name)
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
        arch = self.space.architecture(self.arch_name)
        if is_main_process():
            path = osp.join(runner.work_dir, 'searched_arch.json')
            save_arch(arch, path)
            figure = plot_architecture(
                arch, osp.join(runner.work_dir, 'searched_arch.png'))
            print_log(
                f'RepNAS: searched architecture ({arch.num_branches} '
                f'branches) written to {path}; figure: {figure}',
                logger='current')

    # -- evaluation uses the current best architecture ---------------------------
    def before_val_epoch(self, runner):
        if self.space is not None:
            self.space.apply_best()

    def before_test_epoch(self, runner):
        if self.space is not None:
            self.space.apply_best()

    # -- checkpoints -----------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint['repnas'] = dict(
            space=self.space.state_dict(),
            architecture=self.space.architecture(self.arch_name).to_dict(),
            rng=_global_rng_state())

    def after_load_checkpoint(self, runner, checkpoint):
        """``--resume``: restore the whole search; ``load_from``: warm-start
        alpha only (e.g. a detector continuing a classification search)."""
        state = checkpoint.get('repnas')
        if state is None or self.space is None:
            return
        if getattr(runner, '_resume', False):
            self.space.load_state_dict(state['space'])
            # The data pipeline's random draws continue where they stopped.
            _set_global_rng_state(state['rng'])
            return
        names = state['space']['_extra_state']['block_names']
        if names != self.space.block_names:
            print_log('RepNAS: the loaded checkpoint was searched on other '
                      'blocks; alpha starts from zero', logger='current')
            return
        with torch.no_grad():
            self.space.alpha.copy_(state['space']['alpha'])
        print_log('RepNAS: alpha warm-started from the loaded checkpoint',
                  logger='current')

    # -- logging helpers -----------------------------------------------------------
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


@HOOKS.register_module()
class DyRepHook(Hook):
    """DyRep (dynamic re-parameterization) as a training hook.

    The model starts from its main ``kxk`` branches alone (the original
    network, e.g. after ``ODBBConverted``); every ``interval`` epochs the
    weak branches are de-parameterized and the most salient block(s) grow
    to ``grow_to``, each time without changing the model's eval-mode
    function. Optimizer state of removed parameters is dropped; the current
    structure goes into checkpoints and comes back before weights load.

    Args: see :class:`repnas_mm.search.dyrep.DyRep`; ``interval`` in epochs.
    """
    priority = 'ABOVE_NORMAL'

    def __init__(self,
                 interval: int = 1,
                 grow_to='dbb',
                 metric: str = 'synflow',
                 num_grow=1,
                 bn_scale: float = 0.01,
                 deparam_ratio: float = 0.05,
                 input_size: int = 64):
        self.interval = interval
        self.policy_args = dict(
            grow_to=grow_to,
            metric=metric,
            num_grow=num_grow,
            bn_scale=bn_scale,
            deparam_ratio=deparam_ratio,
            input_size=input_size)
        self.policy = None
        self.history = []

    def before_run(self, runner):
        from .dyrep import DyRep
        if self.policy is not None:
            return
        self.policy = DyRep(_unwrap(runner.model), **self.policy_args)
        _require_unused_parameters(runner, 'DyRepHook',
                                   'inactive branches get no gradient')
        self.policy.start()
        self._record(runner, 0, 'start')

    def after_train_epoch(self, runner):
        epoch = runner.epoch + 1
        if epoch % self.interval or epoch >= runner.max_epochs:
            return
        events = self.policy.step()
        optimizer = getattr(runner.optim_wrapper, 'optimizer', None)
        for param in events['released']:
            param.grad = None
            if optimizer is not None:
                optimizer.state.pop(param, None)
        self._record(runner, epoch, events)
        print_log(
            f'DyRep epoch {epoch}: grew {self._names(events["grown"])}, '
            f'de-parameterized {self._names(events["removed"])}; '
            f'{self.policy.num_branches()} branches in '
            f'{len(self.policy.blocks)} blocks',
            logger='current')

    def after_train(self, runner):
        if is_main_process():
            import json

            from repnas_mm.atomic import atomic_path
            with atomic_path(osp.join(runner.work_dir,
                                      'dyrep_history.json')) as tmp:
                with open(tmp, 'w') as f:
                    json.dump(self.history, f, indent=2)

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint['dyrep'] = dict(
            structure=self.policy.structure(), history=self.history)

    def after_load_checkpoint(self, runner, checkpoint):
        state = checkpoint.get('dyrep')
        if state is None or self.policy is None:
            return
        self.policy.load_structure(state['structure'])
        self.history = list(state['history'])
        print_log(f'DyRep: structure restored ({self.policy.num_branches()} '
                  'branches)', logger='current')

    def _record(self, runner, epoch, events):
        entry = dict(epoch=epoch, branches=self.policy.num_branches())
        if isinstance(events, dict):
            entry['grown'] = [n for n, _ in events['grown']]
            entry['removed'] = [[n, b] for n, b in events['removed']]
        self.history.append(entry)

    @staticmethod
    def _names(items):
        return ', '.join(f'{n} {list(b)}' for n, b in items) or 'nothing'
