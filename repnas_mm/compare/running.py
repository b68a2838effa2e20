"""Running a comparison: the grid of methods x seeds, one run at a time.

Each run trains through ``tools/train.py`` (a subprocess), is fused and
verified (:func:`repnas_mm.deploy.deploy`) and evaluated through
``tools/test.py``; it leaves ``result.json`` in its folder and is reused
when the comparison runs again. See :mod:`repnas_mm.compare`.
"""
import copy
import json
import os
import os.path as osp
import re
import statistics
import time
from typing import Callable, Dict, Optional, Sequence

from repnas_mm.atomic import atomic_path
from repnas_mm.config import read_config
from repnas_mm.experiments import (last_checkpoint, read_scalars,
                                   read_test_metrics, run_logged,
                                   tool_command)

from .methods import (METHODS, CompareError, _search_hook, method_changes,
                      method_config)
from .report import write_tables


def run_one(make_config: Callable[[int, str], object], seed: int,
            run_dir: str, label: str,
            log: Callable[[str], None] = print) -> dict:
    """Train, fuse, verify and evaluate one run: ``make_config(seed,
    run_dir)``, the run's config (``label``: its method's name in the
    table; :func:`method_maker` makes ``make_config`` of a method)."""
    from repnas_mm.deploy import deploy
    result_path = osp.join(run_dir, 'result.json')
    if osp.isfile(result_path):
        with open(result_path) as f:
            return json.load(f)
    os.makedirs(run_dir, exist_ok=True)
    cfg_path = osp.join(run_dir, 'config.py')
    if not osp.isfile(cfg_path):
        with atomic_path(cfg_path, suffix='.py') as tmp:
            make_config(seed, run_dir).dump(tmp)
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
    backbone = Config.fromfile(deployed['config']).model.backbone
    branches = backbone.branches
    result = dict(
        method=label,
        seed=seed,
        top1=metrics['accuracy/top1'],
        top1_last_val=val[-1]['accuracy/top1'] if val else None,
        branches=sum(len(b) for b in branches),
        step_time=statistics.median(r['time'] for r in train),
        train_seconds=round(train_seconds, 1) if not resume else None,
        fused_error=deployed['fused_error'],
        widths=list(backbone.widths) if backbone.get('widths') else None,
        checkpoint=_relative(checkpoint),
        fused_checkpoint=_relative(deployed['checkpoint']),
        fused_config=_relative(deployed['config']))
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
    makers = {label: method_maker(run_cfg, method)
              for label, (run_cfg, method) in configs.items()}
    done = run_grid(makers, seeds, work_dir, max_runs, log,
                    lambda runs: write_tables(runs, work_dir, study, labels,
                                              seeds))
    return write_tables(done, work_dir, study, labels, seeds)


def method_maker(cfg, method: str) -> Callable[[int, str], object]:
    """``make_config(seed, run_dir)`` of a method of :data:`METHODS`."""
    return lambda seed, run_dir: method_config(cfg, method, seed, run_dir)


def run_grid(makers: Dict[str, Callable[[int, str], object]],
             seeds: Sequence[int],
             work_dir: str,
             max_runs: Optional[int] = None,
             log: Callable[[str], None] = print,
             report: Optional[Callable[[list], object]] = None) -> list:
    """Run (or continue) every label x seed of ``makers`` (label ->
    ``make_config(seed, run_dir)``), seed by seed: an interrupted grid
    covers every method of its first seeds. Each run lives in
    ``work_dir/runs/<label>/seed_<s>``; ``report(results)`` is called after
    every new run. The finished runs' results, in grid order."""
    todo = [(label, s) for s in seeds for label in makers]
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
        done.append(run_one(makers[label], seed, run_dir, label, log))
        if not finished and report is not None:
            report(done)  # the table covers every finished run at once
    log(f'[compare] {len(done)} of {len(todo)} runs finished'
        + ('' if len(done) == len(todo) else '; run again to continue')
        + f'; tables in {work_dir}')
    return done
