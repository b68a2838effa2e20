#!/usr/bin/env python
"""Evaluate a checkpoint with the config's test dataloader and evaluator.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
        [--bn-recalibration N]
    bash tools/dist_test.sh CONFIG CHECKPOINT 8

--bn-recalibration N re-estimates the BN statistics on N training images
before testing (an unfused network trained under changing branch masks,
e.g. a search checkpoint; docs/ablation.md).
"""
import argparse
import os.path as osp

import repnas_mm  # noqa: F401  (registers repnas_mm modules)
from repnas_mm.runner import (add_common_args, build_runner, config_from_args,
                              prepare_cpu_distributed, run_tool)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add_common_args(parser)
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out', help='also dump the raw predictions to this .pkl file')
    parser.add_argument(
        '--bn-recalibration', type=int, metavar='N',
        help='re-estimate BN statistics on N training images first')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'error: checkpoint not found: {args.checkpoint}')
    cfg = config_from_args(args)
    cfg.load_from = args.checkpoint
    if args.bn_recalibration is not None:
        if args.bn_recalibration <= 0:
            raise SystemExit('error: --bn-recalibration must be > 0')
        cfg.custom_hooks.append(dict(type='BNRecalibrationHook',
                                     num_images=args.bn_recalibration))
    prepare_cpu_distributed(cfg)
    runner = build_runner(cfg)
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise SystemExit('error: --out must end with .pkl or .pickle')
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))
    metrics = runner.test()
    return metrics


if __name__ == '__main__':
    run_tool(main)
