#!/usr/bin/env python
"""Latency and images/s: training-time vs fused vs ONNX Runtime vs stock
RepVGG deploy vs ResNet-18/50, side by side (CUDA when present, else CPU).

    python tools/benchmark_latency.py A0                       # arch name: classifiers
    python tools/benchmark_latency.py CONFIG [--checkpoint CKPT]   # a config's model
    python tools/benchmark_latency.py A0 --batch-size 128 --device cuda [--dtype float16]

Writes OUT/latency.md (Markdown table), latency.json and latency.png (bar chart).
"""
import argparse

from mmengine.config import DictAction

import repnas_mm  # noqa: F401
from repnas_mm.deploy.latency import run_latency_benchmark
from repnas_mm.runner import run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('target', help='an ODBBNet arch (A0, ...) or a config')
    parser.add_argument('--checkpoint')
    parser.add_argument('--out-dir', default='work_dirs/latency')
    parser.add_argument('--batch-size', type=int,
                        help='default: 128 on CUDA, 8 on CPU')
    parser.add_argument('--input-size', type=int,
                        help='default: 224 (classifiers), 512 (detectors)')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--iters', type=int, default=3)
    parser.add_argument('--device')
    parser.add_argument('--dtype', choices=('float32', 'float16'),
                        default='float32',
                        help='float16: half precision, on CUDA only')
    parser.add_argument('--no-onnx', action='store_true')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    run_latency_benchmark(args.target, args.checkpoint, args.out_dir,
                          args.batch_size, args.input_size, args.repeats,
                          args.iters, args.device, not args.no_onnx,
                          cfg_options=args.cfg_options, dtype=args.dtype)
    return 0


if __name__ == '__main__':
    run_tool(main)
