"""DyRepHook: drives the DyRep policy from the mmengine Runner."""
import json
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from repnas_mm.atomic import atomic_path

from .distributed import require_unused_parameters, unwrap_model
from .dyrep import DyRep


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
        if self.policy is not None:
            return
        self.policy = DyRep(unwrap_model(runner.model), **self.policy_args)
        require_unused_parameters(runner, 'DyRepHook',
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
            if optimizer is not None:  # (JointOptimizer's state is a view)
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
            with atomic_path(osp.join(runner.work_dir,
                                      'dyrep_history.json')) as tmp:
                with open(tmp, 'w') as f:
                    json.dump(self.history, f, indent=2)

    def after_run(self, runner):
        self.policy.close()  # its gradient hooks on the main kernels

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
