"""The methods of a comparison: each one's config, from the search config.

``repnas`` is the search config itself; ``searched``, ``random`` and the
presets drop the search (and, when the search retrains what it found,
keep only its second stage, :func:`second_stage`); ``repnas-<name>`` is a
variant, the search with the options of a variants file
(:func:`read_variants`). See :mod:`repnas_mm.compare`.
"""
import copy
import os.path as osp
from typing import Dict, List, Optional

from repnas_mm.errors import UserError

PRESET_METHODS = ('plain', 'repvgg', 'acb', 'dbb', 'full')
METHODS = ('repnas', 'searched', 'random') + PRESET_METHODS


class CompareError(UserError):
    """A problem with a comparison's inputs or one of its runs."""


def _search_hook(cfg) -> dict:
    hooks = [h for h in cfg.get('custom_hooks', [])
             if h.get('type') == 'RepNASHook']
    if len(hooks) != 1:
        raise CompareError(
            f'{cfg.filename} is not a RepNAS search config (it needs one '
            'RepNASHook in custom_hooks)')
    return hooks[0]


def _without_search(cfg) -> None:
    """Drop the search: its hook and alpha's optimizer (in place)."""
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks', [])
                        if h.get('type') != 'RepNASHook']
    cfg.optim_wrapper.pop('constructor', None)
    cfg.optim_wrapper.pop('alpha_optimizer', None)
    cfg.pop('model_wrapper_cfg', None)


def legal_branches(cfg) -> List[tuple]:
    """The legal branches of every block of the config's model."""
    from repnas_mm.deploy.model import build_model
    from repnas_mm.rep import named_odbbs
    model_cfg = copy.deepcopy(cfg)
    model_cfg.model.backbone.branches = 'full'
    model_cfg.model.backbone.init_cfg = None
    return [b.branch_names for b in named_odbbs(build_model(model_cfg))
            .values()]


def searched_arch_of(run_dir: str) -> str:
    """The searched architecture of the ``repnas`` run beside ``run_dir``
    (``<work_dir>/runs/<method>/seed_<s>``) with the same seed."""
    runs, seed_dir = osp.split(osp.dirname(run_dir))[0], \
        osp.basename(run_dir)
    return osp.join(runs, 'repnas', seed_dir, 'train', 'searched_arch.json')


def second_stage(cfg, fix_epoch: int) -> None:
    """Keep the epochs from ``fix_epoch`` on and their schedulers (in
    place): what a search with ``at_fix='retrain'`` trains its searched
    network with."""
    cfg.train_cfg.max_epochs -= fix_epoch
    if 'max_epochs' in cfg:
        cfg.max_epochs = cfg.train_cfg.max_epochs
    schedulers = cfg.get('param_scheduler') or []
    is_list = isinstance(schedulers, (list, tuple))
    kept = []
    for scheduler in (schedulers if is_list else [schedulers]):
        if scheduler.get('by_epoch', True) is False:
            raise CompareError('second_stage: iteration-based schedulers '
                               'are not supported')
        if scheduler.get('end', fix_epoch + 1) <= fix_epoch:
            continue  # the search stage's own
        shifted = dict(scheduler, begin=scheduler.get('begin', 0) - fix_epoch)
        if 'end' in scheduler:  # none: to the end of training
            shifted['end'] = scheduler['end'] - fix_epoch
        kept.append(shifted)
    cfg.param_scheduler = kept if is_list or not kept else kept[0]


def method_config(cfg, method: str, seed: int, run_dir: str):
    """The config of one run: ``cfg`` changed for ``method`` and ``seed``."""
    from repnas_mm.rep import random_architecture
    from repnas_mm.rep.arch import Architecture, save_arch
    from repnas_mm.rep.presets import resolve_budget
    out = copy.deepcopy(cfg)
    out.randomness = dict(out.get('randomness', {}), seed=seed)
    hook = _search_hook(out)
    if method == 'repnas':
        hook['seed'] = seed
        return out
    _without_search(out)
    if hook.get('at_fix', 'continue') == 'retrain':
        second_stage(out, hook['fix_epoch'])
    if method == 'searched':
        path = searched_arch_of(run_dir)
        if not osp.isfile(path):
            raise CompareError(f'{path} is missing: method searched needs '
                               'the repnas run of the same seed')
        out.model.backbone.branches = path
    elif method == 'random':
        legal = legal_branches(cfg)
        budget = resolve_budget(hook['budget'], sum(map(len, legal)),
                                len(legal))
        path = osp.join(run_dir, 'random_arch.json')
        save_arch(Architecture(None, random_architecture(legal, budget,
                                                         seed),
                               budget=budget), path)
        out.model.backbone.branches = path
    elif method in PRESET_METHODS:
        out.model.backbone.branches = method
    else:
        raise CompareError(f'unknown method {method!r}; methods are '
                           f'{", ".join(METHODS)}')
    return out


def method_changes(cfg, label: str, method: str,
                   options: Optional[dict] = None) -> dict:
    """What a method changes in the study's config, as recorded in
    ``results.json`` (``method_config`` rebuilds each run's config from it
    and the seed, so no per-run config copy needs keeping)."""
    if method == 'repnas':
        return dict(search=True, options=dict(options or {}))
    retrain = _search_hook(cfg).get('at_fix', 'continue') == 'retrain'
    branches = dict(
        searched='runs/repnas/seed_<seed>/searched_arch.json',
        random='runs/random/seed_<seed>/random_arch.json (a seeded draw '
        'under the search budget)').get(method, method)
    return dict(search=False, second_stage_only=retrain,
                branches=branches)


def read_variants(path: str) -> Dict[str, dict]:
    """``variants`` of a Python file: name -> config options."""
    import runpy
    if not osp.isfile(path):
        raise CompareError(f'variants file {path} does not exist')
    variants = runpy.run_path(path).get('variants')
    if not isinstance(variants, dict) or not all(
            isinstance(v, dict) for v in variants.values()):
        raise CompareError(f'{path} must define variants = dict(name=dict('
                           'key=value, ...), ...)')
    return variants
