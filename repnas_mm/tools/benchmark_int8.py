#!/usr/bin/env python
"""INT8 accuracy and speed: the standard and the quantization-friendly ODBB, trained alike.

    python tools/benchmark_int8.py accuracy CONFIG --work-dir DIR [--seeds 0 1 2]
        [--calib-images 256] [--calib-method minmax] [--cfg-options ...]
    python tools/benchmark_int8.py latency [--arch A0] [--input-size 224]
        [--batch-sizes 1 8] [--out-dir DIR]
    python tools/benchmark_int8.py steps CONFIG QAT_CONFIG --work-dir DIR
        [--seeds 0 1 2] [--calib-images 64] [--fp32-layers 2]
        [--time-size 512] [--time-batches 1 8] [--qf-options ...]
        [--cfg-options ...]

accuracy: CONFIG is a RepNAS search config (configs/demo/odbb_fmnist_cls.py,
configs/demo/odbb_cifar10_subset_cls.py). Each seed trains it twice with
the same schedule (tools/compare_architectures.py's runs: method repnas, and
repnas-quant_friendly = the same with model.backbone.form='quant_friendly');
each trained network is deployed with tools/deploy.py --int8 (tolerance 100
points: everything is measured): fp32 and INT8 on the validation set, and INT8/fp32
speed in ONNX Runtime. DIR/int8.{md,json}: mean ± sample std over seeds.
Finished runs are reused when run again.

latency: the fused A0 classifier (1000 classes, random weights with random
BN statistics), fp32 against its INT8 quantization (QDQ, per-channel),
in ONNX Runtime on this machine's CPU, round-robin, medians; OUT/latency_int8.{md,json}.

steps: what each INT8 step buys (repnas_mm/compare/int8_steps.py): per seed,
CONFIG trained with standard and with quantization-friendly blocks
(--qf-options: what else that run changes, e.g. a detector's backbone
source), the standard network fine-tuned with QAT_CONFIG, then standard PTQ,
quant-friendly PTQ, + the sensitivity fallback (--fp32-layers layers fp32),
and QAT deployed in INT8 and evaluated on the test split; the first seed's
models timed side by side at --time-size px. DIR/int8_steps.{md,json}.
"""
import argparse
import json
import os.path as osp
import sys
import tempfile

import numpy as np
from mmengine.config import DictAction

import repnas_mm  # noqa: F401
from repnas_mm.atomic import atomic_path
from repnas_mm.benchmark import markdown_table, mean_std, write_report
from repnas_mm.evidence import command_line
from repnas_mm.runner import run_tool

FORMS = {'standard': {}, 'quant_friendly': {'model.backbone.form': 'quant_friendly'}}


def _label(form):
    return 'repnas' if form == 'standard' else f'repnas-{form}'


def accuracy(args):
    from repnas_mm.compare import compare
    from repnas_mm.deploy import Int8Options, deploy
    variants = {k: v for k, v in FORMS.items() if v}
    compare(args.config, args.work_dir, ['repnas'], args.seeds, args.cfg_options,
            variants=variants, command=args.command)
    rows = {}
    for form in FORMS:
        for seed in args.seeds:
            run_dir = osp.join(args.work_dir, 'runs', _label(form), f'seed_{seed}')
            path = osp.join(run_dir, 'int8.json')
            if not osp.isfile(path):
                with open(osp.join(run_dir, 'result.json')) as f:
                    trained = json.load(f)
                print(f'[int8] {form}, seed {seed}: deploying with --int8', flush=True)
                with open(osp.join(run_dir, 'int8_deploy.log'), 'w') as log:
                    result = deploy(
                        osp.join(run_dir, 'config.py'), trained['checkpoint'],
                        osp.join(run_dir, 'int8_deploy'),
                        int8=Int8Options(100.0, args.calib_images, args.calib_method),
                        log=lambda line: log.write(line + '\n'))
                with atomic_path(path) as tmp, open(tmp, 'w') as f:
                    json.dump(dict(seed=seed, **result['int8']), f, indent=2)
            with open(path) as f:
                rows.setdefault(form, []).append(json.load(f))
    summary = {}
    for form, runs in rows.items():
        summary[form] = {
            key: mean_std([r[key] for r in runs])
            for key in ('fp32', 'int8', 'drop', 'speedup')
        }
        summary[form]['seeds'] = [r['seed'] for r in runs]
    label = rows['standard'][0]['metric_label']
    table = markdown_table(
        ['block', f'fp32 {label}', f'INT8 {label}', 'drop (points)',
         'INT8 / fp32 speed (ORT, batch 1)'],
        [[form] + [f'{s[k][0]:.2f} ± {s[k][1]:.2f}' for k in ('fp32', 'int8', 'drop')]
         + [f'{s["speedup"][0]:.2f}x'] for form, s in summary.items()])
    cal = rows['standard'][0]['calibration']
    report = (f'`{args.config}`, seeds {", ".join(map(str, args.seeds))} (mean ± sample std); '
              f'the trained network fused, exported by mmdeploy and quantized by ONNX '
              f'Runtime (QDQ, per-channel weights; {cal["method"]} calibration on '
              f'{cal["images"]} training images); both evaluated on the validation set.\n\n'
              + table + '\n')
    write_report(args.work_dir, 'int8', report,
                 dict(config=args.config, command=args.command, seeds=args.seeds,
                      forms=summary, runs=rows), 'int8')


def latency(args):
    import torch

    from repnas_mm.deploy.int8 import time_models
    from repnas_mm.deploy.quantize import quantize
    from repnas_mm.deploy.latency import imagenet_classifier
    from repnas_mm.deploy.onnx import export_onnx
    from repnas_mm.models import ODBBNet
    from repnas_mm.rep import reparameterize_model
    torch.manual_seed(0)
    width = ODBBNet.arch_settings[args.arch]['channels'][-1]
    model = imagenet_classifier(dict(type='ODBBNet', arch=args.arch, branches='repvgg'), width)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # BN statistics as if trained
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    fused = reparameterize_model(model.eval()).eval()
    size = args.input_size
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        fp32, int8 = osp.join(folder, 'fp32.onnx'), osp.join(folder, 'int8.onnx')
        export_onnx(fused, torch.zeros(1, 3, size, size), fp32)
        rng = np.random.default_rng(0)
        calib = [rng.standard_normal((1, 3, size, size), dtype=np.float32)
                 for _ in range(args.calib_images)]
        quantize(fp32, int8, calib, 'minmax')
        for batch in args.batch_sizes:
            example = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
            print(f'[int8] timing batch {batch}', flush=True)
            results[batch] = time_models(dict(fp32=fp32, int8=int8), example,
                                         args.repeats, args.iters)
    threads = torch.get_num_threads()
    rows = [[b, f'{r["fp32"]["ms"]:.1f}', f'{r["int8"]["ms"]:.1f}',
             f'{r["fp32"]["images_per_second"]:.1f}', f'{r["int8"]["images_per_second"]:.1f}',
             f'{r["int8"]["speedup"]:.2f}x'] for b, r in results.items()]
    report = (f'Fused {args.arch} classifier, {size}x{size}, ONNX Runtime CPUExecutionProvider, '
              f'{threads} threads ({_cpu()}); INT8 = QDQ, per-channel weights, minmax; '
              f'median of {args.repeats} round-robin repeats of {args.iters} runs, '
              'speed-up = median of per-repeat ratios.\n\n'
              + markdown_table(['batch', 'fp32 ms', 'INT8 ms', 'fp32 images/s',
                                'INT8 images/s', 'INT8 / fp32 speed'], rows) + '\n')
    write_report(args.out_dir, 'latency_int8', report,
                 dict(arch=args.arch, input_size=size, threads=threads, cpu=_cpu(),
                      results={str(b): r for b, r in results.items()}), 'int8')


def steps(args):
    from repnas_mm.compare.int8_steps import run_study
    run_study(args.config, args.qat_config, args.work_dir, args.seeds,
              args.cfg_options, args.qf_options, args.calib_images,
              args.fp32_layers, args.time_size, args.time_batches,
              args.repeats, args.command)


def _cpu():
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f
                     if line.startswith('model name')]
        return names[0] if names else 'unknown CPU'
    except OSError:
        return 'unknown CPU'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='mode', required=True)
    acc = sub.add_parser('accuracy', help='train both forms, deploy in INT8')
    acc.add_argument('config')
    acc.add_argument('--work-dir', required=True)
    acc.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    acc.add_argument('--calib-images', type=int, default=256)
    acc.add_argument('--calib-method', default='minmax',
                     choices=('minmax', 'entropy', 'percentile'))
    acc.add_argument('--cfg-options', nargs='+', action=DictAction)
    lat = sub.add_parser('latency', help='fused A0: fp32 vs INT8 in ONNX Runtime')
    lat.add_argument('--arch', default='A0')
    lat.add_argument('--input-size', type=int, default=224)
    lat.add_argument('--batch-sizes', nargs='+', type=int, default=[1, 8])
    lat.add_argument('--calib-images', type=int, default=16)
    lat.add_argument('--repeats', type=int, default=10)
    lat.add_argument('--iters', type=int, default=3)
    lat.add_argument('--out-dir', default='work_dirs/int8')
    stp = sub.add_parser('steps', help='standard / quant-friendly PTQ, '
                         'fallback, QAT: accuracy and speed')
    stp.add_argument('config')
    stp.add_argument('qat_config')
    stp.add_argument('--work-dir', required=True)
    stp.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    stp.add_argument('--calib-images', type=int, default=64)
    stp.add_argument('--fp32-layers', type=int, default=2)
    stp.add_argument('--time-size', type=int, default=512)
    stp.add_argument('--time-batches', nargs='+', type=int, default=[1, 8])
    stp.add_argument('--repeats', type=int, default=10)
    stp.add_argument('--qf-options', nargs='+', action=DictAction)
    stp.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    args.command = command_line([__file__] + list(
        sys.argv[1:] if argv is None else argv))
    dict(accuracy=accuracy, latency=latency, steps=steps)[args.mode](args)
    return 0


if __name__ == '__main__':
    run_tool(main)
