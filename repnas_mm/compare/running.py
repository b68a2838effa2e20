"""Running a comparison: the grid of methods x seeds.

Each run trains through ``tools/train.py`` (a subprocess), is fused and
verified (:func:`repnas_mm.deploy.deploy`) and evaluated through
``tools/test.py``; it leaves ``result.json`` in its folder and is reused
when the comparison runs again. The driver writes each run's config
(:func:`prepare_run`); an engine (:mod:`.engines`: here, one after another,
or Ray tasks) executes it (:func:`execute_run`). See
:mod:`repnas_mm.compare`.
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

from .engines import (GridEngine, GridProgress, GridRun, pinned, run_lock,
                      run_runs, train_command)
from .methods import (METHODS, CompareError, _search_hook, method_changes,
                      method_config)
from .report import write_tables


def prepare_run(make_config: Callable[[int, str], object], seed: int,
                run_dir: str) -> None:
    """Write the run's ``config.py`` (once: a run that is continued keeps
    the config it started with)."""
    os.makedirs(run_dir, exist_ok=True)
    cfg_path = osp.join(run_dir, 'config.py')
    if not osp.isfile(cfg_path):
        with atomic_path(cfg_path, suffix='.py') as tmp:
            make_config(seed, run_dir).dump(tmp)


def execute_run(run_dir: str, label: str, seed: int,
                cpus: Optional[int] = None,
                gpus: Optional[int] = None) -> dict:
    """Run what :func:`prepare_run` wrote in ``run_dir`` (its result when
    it has one): train (resuming from the last checkpoint there is), fuse,
    verify, test; write and return ``result.json``. What a Ray worker
    runs (:mod:`.engines`)."""
    from repnas_mm.deploy import deploy
    result_path = osp.join(run_dir, 'result.json')
    if osp.isfile(result_path):
        with open(result_path) as f:
            return json.load(f)
    cfg_path = osp.join(run_dir, 'config.py')
    train_dir = osp.join(run_dir, 'train')
    with run_lock(run_dir), pinned(cpus, gpus):
        start = time.time()
        resume = last_checkpoint(train_dir) is not None
        run_logged(train_command(cfg_path, train_dir, resume, gpus),
                   osp.join(run_dir, 'train.log'))
        train_seconds = time.time() - start
        checkpoint = last_checkpoint(train_dir)
        with open(osp.join(run_dir, 'deploy.log'), 'w') as f:
            deployed = deploy(cfg_path, checkpoint,
                              osp.join(run_dir, 'fused'),
                              log=lambda line: f.write(line + '\n'))
        run_logged(tool_command('test', deployed['config'],
                                deployed['checkpoint'],
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
            command: Optional[str] = None,
            engine: Optional[GridEngine] = None) -> dict:
    """Run (or continue) the comparison; return the summary table.

    ``max_runs``: train at most this many runs now (finished ones are not
    counted); the table then covers what is finished. ``variants``: name ->
    config options (``{'custom_hooks.0.noise': False}``); each is a method
    ``repnas-<name>``, the search with those options. ``command``: the
    command line that ran the comparison, recorded in ``results.json``.
    ``engine``: where the runs execute (:mod:`.engines`; default: one after
    another here).
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
    # A searched run trains what the repnas run of its seed found.
    needs = {'searched': ['repnas']} if 'repnas' in makers else {}
    done = run_grid(makers, seeds, work_dir, max_runs, log,
                    lambda runs: write_tables(runs, work_dir, study, labels,
                                              seeds), engine, needs)
    return write_tables(done, work_dir, study, labels, seeds)


def method_maker(cfg, method: str) -> Callable[[int, str], object]:
    """``make_config(seed, run_dir)`` of a method of :data:`METHODS`."""
    return lambda seed, run_dir: method_config(cfg, method, seed, run_dir)


def run_grid(makers: Dict[str, Callable[[int, str], object]],
             seeds: Sequence[int],
             work_dir: str,
             max_runs: Optional[int] = None,
             log: Callable[[str], None] = print,
             report: Optional[Callable[[list], object]] = None,
             engine: Optional[GridEngine] = None,
             needs: Optional[Dict[str, Sequence[str]]] = None) -> list:
    """Run (or continue) every label x seed of ``makers`` (label ->
    ``make_config(seed, run_dir)``), seed by seed: an interrupted grid
    covers every method of its first seeds (the Ray engine runs as many at
    once as it can, those that others need first). Each run lives in
    ``work_dir/runs/<label>/seed_<s>``; ``report(results)`` is called after
    every new run; ``needs``: label -> the labels whose run of the same
    seed must finish first. The finished runs' results, in grid order."""
    engine = engine or GridEngine()
    grid = [GridRun(label, s, osp.join(work_dir, 'runs', label, f'seed_{s}'),
                    i)
            for i, (s, label) in enumerate((s, label) for s in seeds
                                           for label in makers)]
    results = {}
    for run in grid:
        if osp.isfile(osp.join(run.run_dir, 'result.json')):
            results[run.index] = execute_run(run.run_dir, run.label,
                                             run.seed)  # reads it
    todo = [run for run in grid if run.index not in results]
    todo = todo[:max_runs] if max_runs is not None else todo
    progress = GridProgress(len(grid), len(results), len(todo), log)

    def on_done(run: GridRun, result: dict) -> None:
        results[run.index] = result
        if report is not None:  # the table covers every finished run
            report([results[i] for i in sorted(results)])

    try:
        run_runs(engine, todo, needs or {},
                 lambda run: prepare_run(makers[run.label], run.seed,
                                         run.run_dir),
                 execute_run, on_done, progress)
    finally:
        log(f'[compare] {len(results)} of {len(grid)} runs finished'
            + ('' if len(results) == len(grid)
               else '; run again to continue')
            + f'; tables in {work_dir}')
    return [results[i] for i in sorted(results)]
