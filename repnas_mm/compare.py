"""Compare architectures under one training recipe.

``tools/compare_architectures.py`` is its command line.

For one RepNAS search config, every method trains with the config's
schedule, data and seed, through ``tools/train.py`` (a subprocess,
``python -m repnas_mm.tools.train``, its log beside its checkpoints):

- ``repnas``: the config itself, the one-stage search (search, fix at
  ``fix_epoch``, train on);
- ``searched``: the architecture that ``repnas`` run (same seed) found,
  trained from scratch without the search (what the search found, apart
  from how the one-stage run trained it);
- ``random``: a random architecture with the search's branch budget (one
  seeded draw per seed), trained without the search;
- ``plain``, ``repvgg``, ``acb``, ``dbb``, ``full``: the presets;
- ``repnas-<name>``: a variant of the search (an ablation): the config
  changed by the named config options of a variants file.

When the search retrains what it found (``RepNASHook(at_fix='retrain')``),
the methods that train one fixed architecture (``searched``, ``random``,
the presets) train with the search's second stage: the epochs from
``fix_epoch`` on and their schedulers, so every method's network gets the
same schedule.

Each trained network is fused and verified (``tools/deploy.py``'s
``deploy``) and the fused network is evaluated with ``tools/test.py`` on the
config's test set. A finished run leaves ``result.json`` in its folder and
is reused when the comparison is run again; an interrupted training run
resumes from its last checkpoint. The table (JSON, markdown, figure) is
rebuilt from the runs' own result files every time.
"""
import copy
import json
import os
import os.path as osp
import re
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

from repnas_mm.atomic import atomic_path
from repnas_mm.config import read_config
from repnas_mm.errors import UserError
from repnas_mm.experiments import (last_checkpoint, read_scalars,
                                   read_test_metrics, run_logged,
                                   tool_command)

PRESET_METHODS = ('plain', 'repvgg', 'acb', 'dbb', 'full')
METHODS = ('repnas', 'searched', 'random') + PRESET_METHODS


class CompareError(UserError):
    """A problem with a comparison's inputs or one of its runs."""


# -- the configs of the methods -----------------------------------------------
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


# -- one run -----------------------------------------------------------------
def run_one(cfg, method: str, seed: int, run_dir: str,
            log: Callable[[str], None] = print,
            label: Optional[str] = None) -> dict:
    """Train, fuse, verify and evaluate one method with one seed
    (``label``: the name in the table, default ``method``)."""
    label = label or method
    from repnas_mm.deploy import deploy
    result_path = osp.join(run_dir, 'result.json')
    if osp.isfile(result_path):
        with open(result_path) as f:
            return json.load(f)
    os.makedirs(run_dir, exist_ok=True)
    cfg_path = osp.join(run_dir, 'config.py')
    if not osp.isfile(cfg_path):
        with atomic_path(cfg_path, suffix='.py') as tmp:
            method_config(cfg, method, seed, run_dir).dump(tmp)
    train_dir = osp.join(run_dir, 'train')
    start = time.time()
    resume = last_checkpoint(train_dir) is not None
    run_logged(tool_command('train', cfg_path, '--work-dir', train_dir,
                            *(['--resume'] if resume else [])),
               osp.join(run_dir, 'train.log'))
    train_seconds = time.time() - start
    checkpoint = last_checkpoint(train_dir)
    with open(osp.join(run_dir, 'deploy.log'), 'w') as f:
        deployed = deploy(cfg_path, checkpoint, osp.join(run_dir, 'fused'),
                          log=lambda line: f.write(line + '\n'))
    run_logged(tool_command('test', deployed['config'], deployed['checkpoint'],
                            '--work-dir', osp.join(run_dir, 'test')),
               osp.join(run_dir, 'test.log'))
    metrics = read_test_metrics(osp.join(run_dir, 'test'))
    scalars = read_scalars(train_dir)
    train = [r for r in scalars if 'loss' in r and 'time' in r]
    val = [r for r in scalars if 'accuracy/top1' in r]
    from mmengine.config import Config
    branches = Config.fromfile(deployed['config']).model.backbone.branches
    result = dict(
        method=label,
        seed=seed,
        top1=metrics['accuracy/top1'],
        top1_last_val=val[-1]['accuracy/top1'] if val else None,
        branches=sum(len(b) for b in branches),
        step_time=statistics.median(r['time'] for r in train),
        train_seconds=round(train_seconds, 1) if not resume else None,
        fused_error=deployed['fused_error'],
        checkpoint=_relative(checkpoint),
        fused_checkpoint=_relative(deployed['checkpoint']))
    with atomic_path(result_path) as tmp:
        with open(tmp, 'w') as f:
            json.dump(result, f, indent=2)
    log(f'[compare] {label} seed {seed}: fused top-1 {result["top1"]:.2f}, '
        f'{result["branches"]} branches, step {result["step_time"]:.4f} s')
    return result


def _relative(path: str) -> str:
    """``path`` relative to the working directory when it lies in it."""
    rel = osp.relpath(osp.abspath(path))
    return path if rel.startswith('..') else rel


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


# -- the comparison -----------------------------------------------------------
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


def compare(config: str,
            work_dir: str,
            methods: Sequence[str] = METHODS,
            seeds: Sequence[int] = (0, 1, 2),
            cfg_options: Optional[dict] = None,
            max_runs: Optional[int] = None,
            log: Callable[[str], None] = print,
            variants: Optional[Dict[str, dict]] = None,
            command: Optional[str] = None) -> dict:
    """Run (or continue) the comparison; return the summary table.

    ``max_runs``: train at most this many runs now (finished ones are not
    counted); the table then covers what is finished. ``variants``: name ->
    config options (``{'custom_hooks.0.noise': False}``); each is a method
    ``repnas-<name>``, the search with those options. ``command``: the
    command line that ran the comparison, recorded in ``results.json``.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CompareError(f'unknown method {unknown[0]!r}; methods are '
                           f'{", ".join(METHODS)}')
    # The search runs before the runs that train what it found.
    methods = [m for m in METHODS if m in methods]
    cfg = read_config(config, cfg_options)
    _search_hook(cfg)
    cfg.pop('work_dir', None)
    configs = {m: (cfg, m) for m in methods}
    changes = {m: method_changes(cfg, m, m) for m in methods}
    for name, options in (variants or {}).items():
        if not re.fullmatch(r'[A-Za-z0-9_.-]+', name):
            raise CompareError(f'variant name {name!r}: use letters, '
                               'digits, _, . and -')
        changed = copy.deepcopy(cfg)
        changed.merge_from_dict(dict(options))
        _search_hook(changed)
        configs[f'repnas-{name}'] = (changed, 'repnas')
        changes[f'repnas-{name}'] = method_changes(cfg, name, 'repnas',
                                                   options)
    labels = list(configs)
    study = dict(config=_relative(config), command=command,
                 cfg_options=dict(cfg_options or {}), changes=changes)
    todo = [(m, s) for m in labels for s in seeds]
    done, new = [], 0
    for i, (label, seed) in enumerate(todo):
        run_dir = osp.join(work_dir, 'runs', label, f'seed_{seed}')
        finished = osp.isfile(osp.join(run_dir, 'result.json'))
        if not finished and max_runs is not None and new >= max_runs:
            continue
        if not finished:
            log(f'[compare] run {i + 1}/{len(todo)}: {label}, seed {seed} '
                f'({run_dir})')
            new += 1
        run_cfg, method = configs[label]
        done.append(run_one(run_cfg, method, seed, run_dir, log, label))
        if not finished:  # the table covers every finished run at once
            write_tables(done, work_dir, study, labels, seeds)
    summary = write_tables(done, work_dir, study, labels, seeds)
    log(f'[compare] {len(done)} of {len(todo)} runs finished'
        + ('' if len(done) == len(todo) else '; run again to continue')
        + f'; table: {osp.join(work_dir, "results.md")}')
    return summary


def summarize(runs: Sequence[dict], methods: Sequence[str]) -> Dict:
    """Mean and sample std over seeds of each method's numbers."""
    rows = {}
    for method in methods:
        mine = [r for r in runs if r['method'] == method]
        if not mine:
            continue
        top1 = [r['top1'] for r in mine]
        rows[method] = dict(
            seeds=[r['seed'] for r in mine],
            top1_mean=statistics.mean(top1),
            top1_std=statistics.stdev(top1) if len(top1) > 1 else 0.0,
            branches_mean=statistics.mean(r['branches'] for r in mine),
            step_time=statistics.median(r['step_time'] for r in mine))
    return rows


def write_tables(runs, work_dir, study, methods, seeds) -> dict:
    """results.json, results.md and results.png from the runs' results.

    ``study``: the config's path (or a dict with ``config`` and, as
    :func:`compare` records them, ``command``, ``cfg_options`` and each
    method's ``changes``).
    """
    study = study if isinstance(study, dict) else dict(config=study)
    config = study['config']
    rows = summarize(runs, methods)
    for method, row in rows.items():
        if method in study.get('changes', {}):
            row['changes'] = study['changes'][method]
    base = rows.get('plain', {}).get('step_time')
    summary = dict(study, seeds=list(seeds), methods=rows, runs=list(runs))
    with atomic_path(osp.join(work_dir, 'results.json')) as tmp:
        with open(tmp, 'w') as f:
            json.dump(summary, f, indent=2)
    lines = [
        f'Comparison on `{config}`, seeds {", ".join(map(str, seeds))}: '
        'top-1 of the fused network on the test set (mean ± sample std over '
        'seeds), branches kept, median training step time.', '']
    if study.get('command'):
        lines += [f'Command: `{study["command"]}`', '']
    lines += [
        '| method | top-1 (%) | runs | branches | step (s) | step vs plain |',
        '|---|---|---|---|---|---|'
    ]
    for method, row in rows.items():
        ratio = f'{row["step_time"] / base:.2f}x' if base else 'n/a'
        lines.append(
            f'| {method} | {row["top1_mean"]:.2f} ± {row["top1_std"]:.2f} '
            f'| {len(row["seeds"])} | {row["branches_mean"]:.0f} '
            f'| {row["step_time"]:.4f} | {ratio} |')
    with atomic_path(osp.join(work_dir, 'results.md')) as tmp:
        with open(tmp, 'w') as f:
            f.write('\n'.join(lines) + '\n')
    if rows:
        _figure(rows, osp.join(work_dir, 'results.png'))
    return summary


def _figure(rows: dict, path: str):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, row in rows.items():
        ax.errorbar(row['step_time'], row['top1_mean'], yerr=row['top1_std'],
                    fmt='o', capsize=3, label=method)
        ax.annotate(method, (row['step_time'], row['top1_mean']),
                    textcoords='offset points', xytext=(5, 5), fontsize=8)
    ax.set_xlabel('median training step time (s)')
    ax.set_ylabel('fused top-1 (%), mean ± std over seeds')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix='.png') as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


__all__ = ['CompareError', 'METHODS', 'compare', 'method_changes',
           'method_config',
           'read_variants', 'run_one', 'second_stage', 'summarize',
           'write_tables']
