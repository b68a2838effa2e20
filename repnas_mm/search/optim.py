"""Alpha's own optimizer, inside the one optimizer wrapper mmengine drives.

RepNAS trains the network weights with the config's optimizer (SGD in the
paper) and ``alpha`` with Adam (lr 1e-4, betas (0.5, 0.999)). mmengine's
models call ``optim_wrapper.update_params(loss)`` on one wrapper, so:

- :class:`JointOptimizer` presents both optimizers as one
  ``torch.optim.Optimizer``: its ``param_groups`` are the two optimizers' own
  group dicts, so loss scaling (AMP), gradient clipping and ``zero_grad``
  reach alpha too; ``step`` steps both; the state dict holds both. Alpha's
  learning rate is not scheduled: it is restored before every step.
- ``alpha`` is not a parameter of the (DDP-wrapped) model, so its gradient is
  averaged over ranks by the wrapper right after backward, before any
  unscaling, inf check or clipping, and never from inside autograd (where it
  could interleave with DDP's own all-reduces in a rank-dependent order).
- :class:`RepNASOptimWrapperConstructor` builds all of it from the config.
"""
from collections.abc import MutableMapping
from typing import Dict, Optional

import torch
from mmengine.optim import (AmpOptimWrapper, DefaultOptimWrapperConstructor,
                            OptimWrapper)
from mmengine.registry import (OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS,
                               OPTIMIZERS)
from torch.optim import Optimizer

from .distributed import average_over_ranks, unwrap_model
from .space import SearchSpace

DEFAULT_ALPHA_OPTIMIZER = dict(
    type='Adam', lr=1e-4, betas=(0.5, 0.999), weight_decay=0.0)


class JointOptimizer(Optimizer):
    """Several optimizers stepping together as one ``Optimizer``.

    Args:
        optimizers (dict[str, Optimizer]): named parts, in group order.
        fixed_lr (tuple[str]): parts whose learning rate is kept at its
            initial value whatever a scheduler writes into their groups.
    """

    def __init__(self, optimizers: Dict[str, Optimizer], fixed_lr=()):
        params = [p for opt in optimizers.values()
                  for g in opt.param_groups for p in g['params']]
        super().__init__(params, {})
        self.optimizers = dict(optimizers)
        # Share the parts' own group dicts: what schedulers, GradScaler and
        # clipping read or write goes straight to the part optimizers.
        self.param_groups = [
            g for opt in self.optimizers.values() for g in opt.param_groups
        ]
        self._fixed_lr = {
            name: [g['lr'] for g in self.optimizers[name].param_groups]
            for name in fixed_lr
        }

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for name, lrs in self._fixed_lr.items():
            for group, lr in zip(self.optimizers[name].param_groups, lrs):
                group['lr'] = lr
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {name: opt.state_dict()
                for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict):
        for name, opt in self.optimizers.items():
            if name not in state_dict:
                raise KeyError(f'optimizer state has no {name!r} part; was it '
                               'saved by a RepNAS run?')
            opt.load_state_dict(state_dict[name])
        self.param_groups = [
            g for opt in self.optimizers.values() for g in opt.param_groups
        ]

    @property
    def state(self) -> '_JointState':
        """The parts' states as one mapping; changes reach the owning part."""
        return _JointState(self.optimizers.values())

    @state.setter
    def state(self, value):  # set by Optimizer.__init__; the parts own it
        pass

    def __repr__(self):
        parts = ', '.join(f'{name}={type(opt).__name__}'
                          for name, opt in self.optimizers.items())
        return f'JointOptimizer({parts})'


def optimize_with_alpha(optim_wrapper, param: torch.nn.Parameter):
    """Train ``param`` (another search parameter, e.g. a width search's
    ``beta``) with alpha's optimizer and settings: a group of its own, its
    learning rate as fixed as alpha's, its gradient averaged over ranks.
    Idempotent. Needs the :class:`RepNASOptimWrapperConstructor`."""
    joint = optim_wrapper.optimizer
    if not isinstance(joint, JointOptimizer) or \
            'alpha' not in joint.optimizers:
        raise RuntimeError(
            "the search parameters are not optimized; set optim_wrapper's "
            "constructor='RepNASOptimWrapperConstructor'")
    alpha = joint.optimizers['alpha']
    if any(p is param for g in alpha.param_groups for p in g['params']):
        return
    alpha.add_param_group({'params': [param]})
    joint.param_groups = [
        g for opt in joint.optimizers.values() for g in opt.param_groups
    ]
    joint._fixed_lr['alpha'] = [g['lr'] for g in alpha.param_groups]
    optim_wrapper.search_params = (*optim_wrapper.search_params, param)


def weights_optimizer(optim_wrapper) -> Optimizer:
    """The weights' optimizer of a wrapper: the ``weights`` part of a
    :class:`JointOptimizer`, or the wrapper's optimizer itself."""
    optimizer = optim_wrapper.optimizer
    if isinstance(optimizer, JointOptimizer):
        return optimizer.optimizers['weights']
    return optimizer


class _JointState(MutableMapping):
    """Per-parameter optimizer state across parts: a view, not a copy."""

    def __init__(self, optimizers):
        self._parts = list(optimizers)

    def _owner(self, param):
        for opt in self._parts:
            if param in opt.state:
                return opt.state
        return None

    def __getitem__(self, param):
        owner = self._owner(param)
        if owner is None:
            raise KeyError(param)
        return owner[param]

    def __setitem__(self, param, value):
        owner = self._owner(param)
        if owner is None:  # a parameter's first state: its part's groups
            owner = next(opt.state for opt in self._parts if any(
                p is param for g in opt.param_groups for p in g['params']))
        owner[param] = value

    def __delitem__(self, param):
        owner = self._owner(param)
        if owner is None:
            raise KeyError(param)
        del owner[param]

    def __iter__(self):
        return (p for opt in self._parts for p in opt.state)

    def __len__(self):
        return sum(len(opt.state) for opt in self._parts)


class _AlphaGradSync:
    """Mixin: average the search parameters' gradients (``self.alpha``,
    and ``self.search_params`` when a hook adds more) after every
    backward."""
    alpha: Optional[torch.nn.Parameter] = None
    search_params: tuple = ()

    def backward(self, loss, **kwargs):
        super().backward(loss, **kwargs)
        for param in (self.alpha, *self.search_params):
            if param is not None and param.grad is not None:
                average_over_ranks(param.grad)


@OPTIM_WRAPPERS.register_module()
class RepNASOptimWrapper(_AlphaGradSync, OptimWrapper):
    """``OptimWrapper`` that also averages alpha's gradient over ranks."""


@OPTIM_WRAPPERS.register_module()
class RepNASAmpOptimWrapper(_AlphaGradSync, AmpOptimWrapper):
    """``AmpOptimWrapper`` that also averages alpha's gradient over ranks."""


_SEARCH_WRAPPERS = {
    'OptimWrapper': 'RepNASOptimWrapper',
    'AmpOptimWrapper': 'RepNASAmpOptimWrapper',
    'RepNASOptimWrapper': 'RepNASOptimWrapper',
    'RepNASAmpOptimWrapper': 'RepNASAmpOptimWrapper',
}


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class RepNASOptimWrapperConstructor:
    """Weights: the config's optimizer (with ``paramwise_cfg``); alpha: Adam.

    Config::

        optim_wrapper = dict(
            type='OptimWrapper',          # or AmpOptimWrapper (--amp)
            constructor='RepNASOptimWrapperConstructor',
            optimizer=dict(type='SGD', lr=0.1, momentum=0.9,
                           weight_decay=1e-4),
            alpha_optimizer=dict(type='Adam', lr=1e-4, betas=(0.5, 0.999)),
            clip_grad=None)
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg=None):
        cfg = dict(optim_wrapper_cfg)
        alpha_cfg = dict(DEFAULT_ALPHA_OPTIMIZER)
        alpha_cfg.update(cfg.pop('alpha_optimizer', None) or {})
        self.alpha_optimizer_cfg = alpha_cfg
        wrapper_type = cfg.get('type', 'OptimWrapper')
        if wrapper_type not in _SEARCH_WRAPPERS:
            raise ValueError(f'RepNAS search supports OptimWrapper and '
                             f'AmpOptimWrapper, not {wrapper_type}')
        cfg['type'] = _SEARCH_WRAPPERS[wrapper_type]
        self.weights = DefaultOptimWrapperConstructor(cfg, paramwise_cfg)

    def __call__(self, model) -> OptimWrapper:
        wrapper = self.weights(model)
        space = SearchSpace.for_model(unwrap_model(model))
        alpha_opt = OPTIMIZERS.build(
            dict(self.alpha_optimizer_cfg, params=[space.alpha]))
        wrapper.optimizer = JointOptimizer(
            dict(weights=wrapper.optimizer, alpha=alpha_opt),
            fixed_lr=('alpha', ))
        wrapper.alpha = space.alpha
        return wrapper
