#!/usr/bin/env python
"""One comparison grid on the sequential engine and on Ray: wall clock and results.

    python tools/benchmark_engines.py --work-dir DIR [--config CONFIG]
        [--methods repnas searched repvgg] [--seeds 0 1 2] [--repeats 1]
        [--cfg-options ...]

The grid (default: the demo comparison, configs/demo/odbb_fmnist_cls.py on
data/demo/fmnist, 3 methods x 3 seeds) runs through
tools/compare_architectures.py, each time in a fresh folder, on this
machine's N cores:

- sequential: --engine sequential --cpus-per-run N (a run at a time, N threads);
- ray: --engine ray --cpus-per-run 1 (N runs at once, a thread each);
- sequential-1: --engine sequential --cpus-per-run 1 (ray's thread count).

The first two run side by side (alternating, --repeats times); the time is
the whole command's wall clock. DIR/engines.{json,md}: the wall clocks, the
speed-up (median over repeats), and every run's top-1 under each engine: at
the same thread count (ray, sequential-1) they must be identical.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import statistics
import sys
import time

from mmengine.config import DictAction

import repnas_mm  # noqa: F401
from repnas_mm.atomic import atomic_path
from repnas_mm.benchmark import markdown_table
from repnas_mm.errors import UserError
from repnas_mm.evidence import command_line
from repnas_mm.experiments import run_logged, tool_command
from repnas_mm.runner import run_tool

DEMO = 'configs/demo/odbb_fmnist_cls.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--config', default=DEMO)
    parser.add_argument('--methods', nargs='+',
                        default=['repnas', 'searched', 'repvgg'])
    parser.add_argument('--seeds', nargs='+', default=['0', '1', '2'])
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        default={})
    return parser.parse_args(argv)


def engines(cores: int) -> dict:
    """name -> the engine options of tools/compare_architectures.py."""
    return {'sequential': ['--engine', 'sequential', '--cpus-per-run',
                           str(cores)],
            'ray': ['--engine', 'ray', '--cpus-per-run', '1'],
            'sequential-1': ['--engine', 'sequential', '--cpus-per-run', '1']}


def run_grid_once(args, name: str, options: list, repeat: int) -> dict:
    """One whole grid in a fresh folder: its wall clock and results."""
    work = osp.join(args.work_dir, f'{name}_{repeat}')
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    cfg_options = [f'{k}={v}' for k, v in args.cfg_options.items()]
    start = time.monotonic()
    run_logged(tool_command('compare_architectures', args.config,
                            '--work-dir', work, '--methods', *args.methods,
                            '--seeds', *args.seeds, *options,
                            *(['--cfg-options', *cfg_options]
                              if cfg_options else [])),
               osp.join(args.work_dir, f'{name}_{repeat}.log'))
    seconds = time.monotonic() - start
    with open(osp.join(work, 'results.json')) as f:
        runs = json.load(f)['runs']
    print(f'[benchmark] {name} (repeat {repeat}): {seconds:.0f} s for '
          f'{len(runs)} runs', flush=True)
    return dict(seconds=round(seconds, 1),
                top1={f'{r["method"]} seed {r["seed"]}': r['top1']
                      for r in runs},
                fused_error={f'{r["method"]} seed {r["seed"]}':
                             r['fused_error'] for r in runs})


def report(args, command: str, cores: int, grids: dict) -> dict:
    seq, ray, one = grids['sequential'], grids['ray'], grids['sequential-1']
    speedups = [s['seconds'] / r['seconds'] for s, r in zip(seq, ray)]
    same = all(r['top1'] == one[0]['top1'] and
               r['fused_error'] == one[0]['fused_error'] for r in ray)
    summary = dict(
        command=command,
        config=args.config, methods=args.methods, seeds=args.seeds,
        cores=cores, repeats=args.repeats,
        seconds={name: [g['seconds'] for g in runs]
                 for name, runs in grids.items()},
        speedup_median=round(statistics.median(speedups), 3),
        speedups=[round(s, 3) for s in speedups],
        identical_at_same_threads=same,
        top1={name: runs[0]['top1'] for name, runs in grids.items()})
    rows = [[name, ' '.join(opts), ', '.join(f'{g["seconds"]:.0f}'
                                             for g in grids[name])]
            for name, opts in engines(cores).items()]
    runs = list(one[0]['top1'])
    lines = [
        f'# Sequential vs Ray: {len(runs)} runs of `{args.config}`',
        '',
        f'`{summary["command"]}`',
        '',
        f'{cores} cores; every grid in a fresh folder, its whole command '
        'timed (sequential and ray alternate).',
        '',
        markdown_table(['engine', 'options', 'wall clock (s)'], rows),
        '',
        f'**Speed-up of ray over sequential ({cores} threads a run): '
        f'{summary["speedup_median"]:.2f}x** (median of '
        f'{", ".join(f"{s:.2f}x" for s in speedups)}).',
        '',
        'Every run\'s top-1 ' + ('and fused error are identical'
                                 if same else '**differs**') +
        ' between ray and sequential-1 (one thread a run each).',
        '',
        markdown_table(['run'] + list(grids), [
            [run] + [f'{grids[n][0]["top1"][run]:.2f}' for n in grids]
            for run in runs]),
        '']
    with atomic_path(osp.join(args.work_dir, 'engines.md')) as tmp:
        with open(tmp, 'w') as f:
            f.write('\n'.join(lines))
    with atomic_path(osp.join(args.work_dir, 'engines.json')) as tmp:
        with open(tmp, 'w') as f:
            json.dump(summary, f, indent=2)
    print('\n'.join(lines))
    return summary


def main(argv=None):
    args = parse_args(argv)
    command = command_line([__file__] + list(argv if argv is not None
                                             else sys.argv[1:]))
    if args.config == DEMO and not osp.isdir('data/demo/fmnist'):
        raise UserError('data/demo/fmnist is missing: run `python '
                        'tools/prepare_demo_data.py` (or `make demo`) first')
    os.makedirs(args.work_dir, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    options = engines(cores)
    grids = {name: [] for name in options}
    for repeat in range(args.repeats):
        for name in ('sequential', 'ray'):
            grids[name].append(run_grid_once(args, name, options[name],
                                             repeat))
    grids['sequential-1'].append(run_grid_once(args, 'sequential-1',
                                               options['sequential-1'], 0))
    report(args, command, cores, grids)
    return 0


if __name__ == '__main__':
    run_tool(main)
