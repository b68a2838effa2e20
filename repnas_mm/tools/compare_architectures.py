#!/usr/bin/env python
"""Train the RepNAS search, random architectures and the presets with one recipe; compare them.

    python tools/compare_architectures.py CONFIG --work-dir DIR
        [--methods repnas searched random plain repvgg acb dbb full] [--seeds 0 1 2]
        [--max-runs N] [--variants FILE] [--cfg-options KEY=VALUE ...]
        [--engine {sequential,ray}] [--address auto|HOST:PORT]
        [--cpus-per-run N] [--gpus-per-run N]

CONFIG is a RepNAS search config (configs/demo/odbb_fmnist_cls.py,
configs/odbb_vgg16_cifar10.py, ...). Every method trains with its schedule,
data and seeds through tools/train.py: repnas (the one-stage search),
searched (what that run found, trained from scratch), random (the search's
budget, one draw per seed) and the presets; each network is fused, verified and
evaluated on the test set (tools/deploy.py, tools/test.py). DIR/runs/<method>/
seed_<s>/ holds each run's config, logs, checkpoints and result.json;
DIR/results.{json,md,png} the table (mean ± std over seeds, branches kept,
median step time) and the figure (top-1 against step time). Run the same
command again to continue an interrupted comparison: finished runs are
reused, an interrupted training resumes from its last checkpoint.
--max-runs trains at most N runs now (to split the work). --variants FILE
adds ablations of the search: FILE defines variants = {name: {config key:
value, ...}}, and each variant trains as method repnas-<name>
(docs/ablation.md; e.g. configs/demo/ablation_variants.py).
--engine ray runs every run as a Ray task, as many at once as the
resources allow (--cpus-per-run, --gpus-per-run each), on this machine or
on the cluster at --address; the results are the same files
(docs/compare.md#engines).
"""
import argparse
import sys

from mmengine.config import DictAction

import repnas_mm  # noqa: F401
from repnas_mm.compare import (METHODS, add_engine_args, compare,
                               engine_from_args, read_variants)
from repnas_mm.evidence import command_line
from repnas_mm.runner import run_tool


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config')
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--methods', nargs='+', default=list(METHODS),
                        choices=METHODS)
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--max-runs', type=int, default=None)
    parser.add_argument('--variants', default=None,
                        help='a Python file defining variants = {name: '
                        '{config key: value}}: ablations of the search')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys of every run')
    add_engine_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    variants = read_variants(args.variants) if args.variants else None
    engine = engine_from_args(args)
    compare(args.config, args.work_dir, args.methods, args.seeds,
            args.cfg_options, args.max_runs, variants=variants,
            command=command_line([__file__]
                                 + list(argv if argv is not None
                                        else sys.argv[1:])),
            engine=engine)
    return 0


if __name__ == '__main__':
    run_tool(main)
