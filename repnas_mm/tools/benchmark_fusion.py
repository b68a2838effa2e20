#!/usr/bin/env python
"""Throughput of ODBBNet before and after fusion, and against stock RepVGG.

For each preset: images/s of the training-time (multi-branch, eval mode)
form and of the fused form; plus stock ``mmpretrain.models.RepVGG(deploy=True)``
of the same arch. All models run side by side (round-robin) in one process;
medians over repeats; ratios are medians of per-repeat paired ratios. Uses
CUDA when present (papers' setting: batch 128, fp32, 224x224), else the CPU.

    python tools/benchmark_fusion.py                       # A0, presets plain/repvgg/dbb/full
    python tools/benchmark_fusion.py --arch B1 --batch-size 64 --out work_dirs/bench.json
"""
import argparse
import json
import os
import os.path as osp

import torch

import repnas_mm  # noqa: F401
from repnas_mm.benchmark import (cuda_peak_mib, describe_device,
                                 markdown_table, paired_speedup,
                                 time_round_robin)
from repnas_mm.evidence import command_line
from repnas_mm.models import ODBBNet
from repnas_mm.rep import reparameterize_model


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='A0')
    parser.add_argument(
        '--presets', nargs='+', default=['plain', 'repvgg', 'dbb', 'full'])
    parser.add_argument(
        '--batch-size',
        type=int,
        help='default: 128 on CUDA (the papers), 8 on CPU')
    parser.add_argument('--input-size', type=int, default=224)
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--iters', type=int, default=4)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--device', default=None, help='cuda or cpu')
    parser.add_argument('--threads', type=int, help='torch CPU threads')
    parser.add_argument('--out', help='also write the results as JSON here')
    return parser.parse_args()


def build_models(arch, presets, device):
    """name -> eval-mode backbone, including stock RepVGG deploy."""
    from mmpretrain.models import RepVGG
    models = {}
    for preset in presets:
        net = ODBBNet(arch, branches=preset).eval()
        models[f'ODBB-{arch} {preset} (training-time)'] = net
        models[f'ODBB-{arch} {preset} (fused)'] = reparameterize_model(net)
    models[f'RepVGG-{arch} deploy (mmpretrain)'] = RepVGG(arch, deploy=True)
    for model in models.values():
        model.eval()  # (mmpretrain's RepVGG.train() returns None: no chaining)
    return {k: m.to(device) for k, m in models.items()}


def main():
    args = parse_args()
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch_size or (128 if device == 'cuda' else 8)
    x = torch.randn(batch, 3, args.input_size, args.input_size, device=device)
    models = build_models(args.arch, args.presets, device)
    runs = {name: (lambda m=m: m(x)) for name, m in models.items()}
    where = describe_device(device)
    print(f'{where}; batch {batch}, {args.input_size}x{args.input_size}, '
          f'fp32; {args.repeats} repeats x {args.iters} iterations')
    timings = time_round_robin(runs, batch, device, args.repeats, args.iters,
                               args.warmup)

    peaks = {name: cuda_peak_mib(run, device) for name, run in runs.items()
             } if torch.device(device).type == 'cuda' else {}
    stock = timings[f'RepVGG-{args.arch} deploy (mmpretrain)']
    rows, results = [], []
    for preset in args.presets:
        train = timings[f'ODBB-{args.arch} {preset} (training-time)']
        fused = timings[f'ODBB-{args.arch} {preset} (fused)']
        row = dict(
            preset=preset,
            training_img_s=train.images_per_second,
            fused_img_s=fused.images_per_second,
            # Paired per-repeat ratios of throughput, median over repeats.
            fused_over_training=paired_speedup(fused, train),
            fused_over_repvgg=paired_speedup(fused, stock),
            spread=max(train.spread, fused.spread))
        if peaks:  # CUDA peak memory of one batch
            row['training_cuda_peak_mib'] = peaks[train.name]
            row['fused_cuda_peak_mib'] = peaks[fused.name]
        results.append(row)
        rows.append([
            preset, f'{row["training_img_s"]:.1f}', f'{row["fused_img_s"]:.1f}',
            f'{row["fused_over_training"]:.2f}x',
            f'{row["fused_over_repvgg"]:.3f}'
        ])
    headers = [
        'preset', 'training-time img/s', 'fused img/s', 'fused / training',
        f'fused / RepVGG-{args.arch} deploy'
    ]
    print()
    print(markdown_table(headers, rows))
    for name, peak in peaks.items():
        print(f'CUDA peak memory of one batch, {name}: {peak:.0f} MiB')
    print(f'\nstock RepVGG-{args.arch} deploy: '
          f'{stock.images_per_second:.1f} img/s (median of {args.repeats}); '
          f'worst repeat spread {max(r["spread"] for r in results):.0%}')
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(
                dict(
                    command=command_line(),
                    device=where,
                    arch=args.arch,
                    batch_size=batch,
                    input_size=args.input_size,
                    repvgg_img_s=stock.images_per_second,
                    presets=results,
                    seconds={k: t.seconds
                             for k, t in timings.items()}),
                f,
                indent=2)


if __name__ == '__main__':
    main()
