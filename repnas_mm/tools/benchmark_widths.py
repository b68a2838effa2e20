#!/usr/bin/env python
"""The width study: uniform widths vs the latency search vs random widths (issue 32).

    python tools/benchmark_widths.py CONFIG --work-dir DIR [--multipliers 0.5 0.75 1.0]
        [--seeds 0 1 2] [--batches 1 8] [--repeats 15] [--max-runs N]
        [--cfg-options KEY=VALUE ...] [--engine ray [--address A] [--cpus-per-run N] ...]

CONFIG is a width search config (configs/demo/odbb_cifar10_subset_latency_cls.py); its
latency table must exist (tools/latency_table.py CONFIG --calibrate). Every method keeps the
config's branch search and schedule and differs only in its widths: uniform-<m> (every layer
m times its width), search-<m> (the width search under uniform-<m>'s predicted latency) and
random-<m> (a seeded random draw of widths within [0.9, 1] of that budget); runs train through
tools/train.py, are fused and verified, and evaluated on the test set with tools/test.py, as
tools/compare_architectures.py does (DIR/runs/<method>/seed_<s>/; run again to continue;
--engine ray: as Ray tasks, docs/compare.md#engines).
Once every run has finished, each shipped network is exported to ONNX and timed in ONNX
Runtime round-robin at the table's input size, at each batch; DIR/results.{json,md} hold top-1
(mean ± std over seeds), predicted and measured latency, paired speed-ups and the goals of
issue 32, DIR/accuracy_latency.png the figure (docs/widths.md).
"""
import argparse
import sys

from mmengine.config import DictAction

import repnas_mm  # noqa: F401
from repnas_mm.compare import add_engine_args, engine_from_args
from repnas_mm.compare.widths import MULTIPLIERS, width_study
from repnas_mm.evidence import command_line
from repnas_mm.runner import run_tool


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config')
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--multipliers', nargs='+', type=float, default=list(MULTIPLIERS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--batches', nargs='+', type=int, default=[1, 8])
    parser.add_argument('--repeats', type=int, default=15,
                        help='round-robin timing rounds per batch')
    parser.add_argument('--max-runs', type=int, default=None,
                        help='train at most N runs now (to split the work)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys of every run')
    add_engine_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    engine = engine_from_args(args)
    width_study(args.config, args.work_dir, args.multipliers, args.seeds, args.batches,
                args.cfg_options, args.max_runs, args.repeats,
                command=command_line([__file__] + list(argv if argv is not None
                                                       else sys.argv[1:])),
                engine=engine)
    return 0


if __name__ == '__main__':
    run_tool(main)
