"""Runs that only wait and report (tests/test_engines.py): the Ray engine's
scheduling without training. Module-level, so Ray's workers find them by name.

A run's label says what it does: ``slow-<seconds>`` sleeps, ``broken`` fails
like a training that exits 1. Each writes when it started and ended into its
folder.
"""
import json
import os.path as osp
import time

from repnas_mm.experiments import ToolError


def execute(run_dir, label, seed, cpus, gpus):
    start = time.time()
    with open(osp.join(run_dir, 'started'), 'w') as f:
        f.write(str(start))
    if label == 'broken':
        raise ToolError(f'train failed (exit 1); log: {run_dir}/train.log')
    time.sleep(float(label.split('-')[1]) if '-' in label else 0)
    with open(osp.join(run_dir, 'times.json'), 'w') as f:
        json.dump(dict(start=start, end=time.time()), f)
    return dict(top1=50.0, branches=1, step_time=0.1)
