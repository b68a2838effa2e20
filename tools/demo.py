#!/usr/bin/env python
"""The repnas_mm demo: the product's pipeline on real images, on a CPU.

    make demo                      # or: python tools/demo.py
    python tools/demo.py --quick   # a much smaller run (what the tests do)

Steps (each through the same command-line tools a user runs):
  1. data: a class-per-folder subset of Fashion-MNIST (tools/prepare_demo_data.py)
  2. search: RepNAS on an ODBBNet classifier, half of its branches kept
     (tools/train.py configs/demo/odbb_fmnist_cls.py), then the searched
     network trains on
and a summary whose numbers are read from the run's own logs.
"""
import argparse
import json
import os.path as osp
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))

import prepare_demo_data  # noqa: E402

CLS_CONFIG = REPO / 'configs' / 'demo' / 'odbb_fmnist_cls.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/demo/fmnist')
    parser.add_argument(
        '--fmnist',
        default=prepare_demo_data.DEFAULT_SOURCE,
        help='folder with the Fashion-MNIST *-ubyte.gz files')
    parser.add_argument(
        '--quick',
        action='store_true',
        help='tiny data and schedule: checks the pipeline, not accuracy')
    return parser.parse_args(argv)


def banner(text):
    print(f'\n==== {text} ====', flush=True)


def run(cmd, log_path):
    """Run a tool, mirror its output to ``log_path``; exit on failure."""
    print('$ ' + ' '.join(map(str, cmd)), flush=True)
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1)
        for line in proc.stdout:
            log.write(line)
            if ' - mmengine - ' in line or line.startswith(('[', 'error')):
                sys.stdout.write(line)
        rc = proc.wait()
    if rc != 0:
        print(f'demo: step failed (exit {rc}); full log: {log_path}',
              file=sys.stderr)
        sys.exit(rc)


def read_scalars(work_dir):
    files = sorted(Path(work_dir).glob('*/vis_data/scalars.json'))
    if not files:
        raise SystemExit(f'demo: no training log found under {work_dir}')
    with open(files[-1]) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv=None):
    args = parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    summary = {}

    banner('1/2 data: Fashion-MNIST subset')
    train_n, val_n = (20, 10) if args.quick else (200, 50)
    try:
        prepare_demo_data.write_classification(args.fmnist, args.data_root,
                                               train_n, val_n, seed=0)
    except FileNotFoundError as exc:
        raise SystemExit(f'demo: {exc}')

    banner('2/2 search: RepNAS on an ODBBNet classifier')
    cls_dir = work / 'classifier'
    options = [
        f'train_dataloader.dataset.data_root={args.data_root}',
        f'val_dataloader.dataset.data_root={args.data_root}',
        f'test_dataloader.dataset.data_root={args.data_root}',
    ]
    if args.quick:
        options += ['train_cfg.max_epochs=1', 'param_scheduler.T_max=1',
                    'param_scheduler.end=1']
    run([
        sys.executable, 'tools/train.py', CLS_CONFIG, '--work-dir', cls_dir,
        '--cfg-options', *options
    ], work / 'train_classifier.log')
    scalars = read_scalars(cls_dir)
    accuracies = [s['accuracy/top1'] for s in scalars if 'accuracy/top1' in s]
    summary['val top-1 accuracy (10 classes, chance 10%)'] = (
        f'{accuracies[-1]:.1f}% after {len(accuracies)} epoch(s)')
    with open(cls_dir / 'searched_arch.json') as f:
        arch = json.load(f)
    legal = sum(len(b['alpha']) for b in arch['blocks'])
    summary['kept branches vs budget'] = (
        f'{arch["num_branches"]} kept, budget {arch["budget"]} of {legal} '
        f'legal, in {len(arch["blocks"])} blocks')
    summary['searched architecture'] = str(cls_dir / 'searched_arch.json')
    summary['architecture figure'] = str(cls_dir / 'searched_arch.png')
    checkpoints = sorted(cls_dir.glob('epoch_*.pth'), key=osp.getmtime)
    summary['classifier checkpoint'] = str(checkpoints[-1])

    banner('summary')
    summary['time'] = f'{time.time() - start:.0f} s'
    summary['logs'] = str(work)
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f'{key:<{width}} : {value}')
    with open(work / 'summary.json', 'w') as f:
        json.dump(summary, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
