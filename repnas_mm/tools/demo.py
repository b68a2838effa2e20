#!/usr/bin/env python
"""The repnas_mm demo: the whole pipeline on real images, on a CPU.

    make demo                      # or: python tools/demo.py
    python tools/demo.py --quick   # a much smaller run (what the tests do)

Every step runs the command-line tool a user would run:
  1. data      tools/prepare_demo_data.py: Fashion-MNIST class folders and a
               COCO-format detection set of items placed on canvases
  2. search    tools/train.py configs/demo/odbb_fmnist_cls.py: RepNAS on a
               small ODBBNet classifier under a branch budget (+ figure),
               then the searched network retrained
  3. baseline  tools/compare_architectures.py --methods repvgg: the RepVGG
               preset trained with the searched network's schedule
  4. detect    tools/train.py configs/demo/centernet_odbb_fmnist.py: CenterNet
               fine-tuned from the searched backbone, COCO mAP (CocoMetric)
  5. deploy    tools/deploy.py --int8: fuse, verify, mmdeploy SDK folder, and
               its post-training INT8 quantization, fp32 vs INT8 bbox mAP;
               then tools/train.py configs/demo/centernet_odbb_fmnist_qat.py
               (quantization-aware fine-tune, 4 epochs) and tools/deploy.py
               --int8 of it: the INT8 model with the scales QAT trained
  6. latency   tools/benchmark_latency.py: training-time vs fused vs ORT vs
               ResNet backbones
The summary at the end is read from the files those runs wrote.
"""
import argparse
import json
import shutil
import time
from pathlib import Path

from repnas_mm import demo_data
from repnas_mm.errors import UserError
from repnas_mm.experiments import (last_checkpoint, read_scalars,
                                   read_test_metrics, run_logged,
                                   tool_command)
from repnas_mm.resources import config_path
from repnas_mm.runner import run_tool

CLS_CONFIG = config_path('demo/odbb_fmnist_cls.py')
DET_CONFIG = config_path('demo/centernet_odbb_fmnist.py')
QAT_CONFIG = config_path('demo/centernet_odbb_fmnist_qat.py')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/demo/fmnist')
    parser.add_argument('--det-data-root', default='data/demo/fmnist_det')
    parser.add_argument(
        '--fmnist',
        default=demo_data.DEFAULT_SOURCE,
        help='folder with the Fashion-MNIST *-ubyte.gz files')
    parser.add_argument(
        '--quick',
        action='store_true',
        help='tiny data and schedules: checks the pipeline, not accuracy')
    return parser.parse_args(argv)


def banner(text):
    print(f'\n==== {text} ====', flush=True)


def _shown(line: str) -> bool:
    """The lines of a step's log the demo prints: epochs, the search, and
    the deploy/latency/compare reports."""
    return (' - mmengine - ' in line and ('Epoch(' in line
                                         or 'RepNAS' in line)) or \
        line.startswith(('[deploy]', '[latency]', '[compare]', '|', 'error'))


def run(tool, args, log_path):
    """Run ``tools/<tool>.py ARGS``; its log in ``log_path``, the lines
    that say how it goes on the screen."""
    cmd = tool_command(tool, *args)
    print('$ ' + ' '.join(cmd), flush=True)
    if log_path.exists():
        log_path.unlink()
    run_logged(cmd, str(log_path), echo=_shown)


def main(argv=None):
    args = parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    quick = args.quick

    banner('1/6 data: Fashion-MNIST classification and detection sets')
    try:
        demo_data.write_classification(
            args.fmnist, args.data_root, *((20, 10) if quick else (200, 50)),
            seed=0, test_per_class=10 if quick else 100)
        demo_data.write_detection(
            args.fmnist, args.det_data_root,
            *((32, 16) if quick else (600, 100)), seed=0,
            test_images=16 if quick else 200)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    data_root = Path(args.data_root).resolve()
    det_root = Path(args.det_data_root).resolve()

    banner('2/6 search: RepNAS on an ODBBNet classifier')
    cls_dir = work / 'classifier'
    cls_options = [f'{k}_dataloader.dataset.data_root={data_root}'
                   for k in ('train', 'val', 'test')]
    if quick:  # search one epoch, retrain one
        cls_options += [
            'train_cfg.max_epochs=2', 'param_scheduler.begin=1',
            'param_scheduler.T_max=1', 'param_scheduler.end=2',
            'custom_hooks.0.warmup_epochs=0', 'custom_hooks.0.fix_epoch=1'
        ]
    run('train', [CLS_CONFIG, '--work-dir', cls_dir,
                  '--cfg-options', *cls_options], work / '2_search.log')
    cls_ckpt = last_checkpoint(cls_dir)
    # The final number: the searched network on the held-out test split.
    run('test', [CLS_CONFIG, cls_ckpt, '--work-dir', work / 'classifier_test',
                 '--cfg-options', *cls_options], work / '2_test.log')

    banner('3/6 baseline: the RepVGG preset, trained like the searched network')
    baseline_dir = work / 'baseline'
    shutil.rmtree(baseline_dir, ignore_errors=True)  # never a stale run
    run('compare_architectures',
        [CLS_CONFIG, '--work-dir', baseline_dir, '--methods', 'repvgg',
         '--seeds', 0, '--cfg-options', *cls_options], work / '3_baseline.log')

    banner('4/6 detect: CenterNet fine-tuned from the searched backbone')
    det_dir = work / 'detector'
    det_options = [
        f'model.backbone.branches={cls_ckpt}',  # its arch and its weights
        f'train_dataloader.dataset.dataset.data_root={det_root}/',
        f'val_dataloader.dataset.data_root={det_root}/',
        f'test_dataloader.dataset.data_root={det_root}/',
        f'val_evaluator.ann_file={det_root}/instances_val.json',
        f'test_evaluator.ann_file={det_root}/instances_test.json',
    ]
    train_det = ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
                 'param_scheduler.1.end=1'] if quick else []
    run('train', [DET_CONFIG, '--work-dir', det_dir,
                  '--cfg-options', *det_options, *train_det],
        work / '4_detect.log')
    det_ckpt = last_checkpoint(det_dir)

    banner('5/6 deploy: fuse, verify on real images, export with mmdeploy, '
           'INT8 (post-training, then quantization-aware)')
    deploy_dir = work / 'deploy'
    # Post-training INT8 of the detector as trained: its drop is measured
    # and shown, and bounded by a loose tolerance.
    run('deploy', [DET_CONFIG, det_ckpt, '--work-dir', deploy_dir, '--int8',
                   '--calib-images', 16 if quick else 64,
                   '--int8-tolerance', 5, '--num-images', 2 if quick else 8,
                   '--cfg-options', *det_options], work / '5_deploy.log')
    # What ships in INT8: a short quantization-aware fine-tune (the best
    # path that fits the demo's time: about a minute, docs/int8.md), then
    # INT8 with the scales it trained.
    qat_dir = work / 'detector_qat'
    train_qat = ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
                 'param_scheduler.0.T_max=1', 'param_scheduler.0.end=1'
                 ] if quick else []
    run('train', [QAT_CONFIG, '--work-dir', qat_dir, '--cfg-options',
                  f'load_from={det_ckpt}', *det_options, *train_qat],
        work / '5_qat.log')
    qat_ckpt = last_checkpoint(qat_dir)
    qat_deploy_dir = work / 'deploy_qat'
    run('deploy', [QAT_CONFIG, qat_ckpt, '--work-dir', qat_deploy_dir,
                   '--int8', '--int8-tolerance', 5 if quick else 1,
                   '--num-images', 2 if quick else 8,
                   '--cfg-options', *det_options], work / '5_deploy_qat.log')

    banner('6/6 latency: training-time vs fused vs ONNX Runtime')
    latency_dir = work / 'latency'
    run('benchmark_latency',
        [DET_CONFIG, '--checkpoint', det_ckpt, '--input-size', 128,
         '--out-dir', latency_dir,
         *(['--repeats', 2, '--iters', 1] if quick else []),
         '--cfg-options', *det_options], work / '6_latency.log')

    banner('summary')
    summary = collect_summary(work, cls_dir, baseline_dir, det_dir,
                              deploy_dir, latency_dir, qat_deploy_dir)
    summary['time'] = f'{time.time() - start:.0f} s'
    summary['numbers']['seconds'] = round(time.time() - start)
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if key == 'numbers':
            continue
        if isinstance(value, dict):
            print(f'{key}:')
            for name, path in value.items():
                print(f'  {name:<{width - 2}} : {path}')
        else:
            print(f'{key:<{width}} : {value}')
    with open(work / 'summary.json', 'w') as f:
        json.dump(summary, f, indent=2)
    print(f'\n(summary also in {work / "summary.json"}; logs of every step '
          f'in {work})')
    return 0


def collect_summary(work, cls_dir, baseline_dir, det_dir, deploy_dir,
                    latency_dir, qat_deploy_dir) -> dict:
    """Numbers and paths, read from the files the steps wrote.

    ``summary['numbers']`` holds the same numbers unformatted: what README
    and docs/benchmarks.md quote (docs/results/demo/summary.json).
    """
    summary, numbers = {}, {}
    accuracy = [s['accuracy/top1'] for s in read_scalars(cls_dir, latest_only=True)
                if 'accuracy/top1' in s]
    test_top1 = read_test_metrics(work / 'classifier_test')['accuracy/top1']
    summary['test top-1 accuracy (10 classes, chance 10%)'] = (
        f'{test_top1:.1f}% (held-out test split; val {accuracy[-1]:.1f}% '
        f'after {len(accuracy)} epoch(s))')
    with open(baseline_dir / 'results.json') as f:
        repvgg = json.load(f)['methods']['repvgg']
    with open(cls_dir / 'searched_arch.json') as f:
        branches = json.load(f)['num_branches']
    summary['searched vs RepVGG preset, same schedule, 1 seed'] = (
        f'{test_top1:.1f}% vs {repvgg["top1_mean"]:.1f}% test top-1 '
        f'({branches} vs {repvgg["branches_mean"]:.0f} branches; over 3 '
        f'seeds: docs/results/default_demo)')
    numbers.update(test_top1=test_top1, val_top1=accuracy[-1],
                   repvgg_test_top1=repvgg['top1_mean'],
                   branches=branches,
                   repvgg_branches=repvgg['branches_mean'])
    with open(cls_dir / 'searched_arch.json') as f:
        arch = json.load(f)
    legal = sum(len(b['alpha']) for b in arch['blocks'])
    summary['kept branches vs budget'] = (
        f'{arch["num_branches"]} kept, budget {arch["budget"]} of {legal} '
        f'legal, in {len(arch["blocks"])} blocks')
    with open(deploy_dir / 'deploy_result.json') as f:
        deployed = json.load(f)
    int8 = deployed['int8']
    summary['detection bbox mAP (CocoMetric, test split, ONNX Runtime)'] = (
        f'{int8["fp32"] / 100:.3f}')
    with open(qat_deploy_dir / 'deploy_result.json') as f:
        qat = json.load(f)['int8']
    numbers.update(det_test_map=int8['fp32'] / 100,
                   int8_ptq_test_map=int8['int8'] / 100,
                   int8_test_map=qat['int8'] / 100,
                   int8_speedup=qat['speedup'],
                   fused_error=deployed['fused_error'])
    summary['fused vs training-time, max relative error'] = (
        f'{deployed["fused_error"]:.1e} on {deployed["images"]} images')
    summary['mmdeploy export vs PyTorch (ONNX Runtime, SDK)'] = (
        f'{deployed["onnxruntime_error"]:.1e}, {deployed["sdk_error"]:.1e} '
        '(top-10 detections: box corners / image side, scores)')
    summary['INT8 (QAT) vs fp32 bbox mAP (ONNX Runtime)'] = (
        f'{qat["int8"] / 100:.3f} vs {int8["fp32"] / 100:.3f}, '
        f'{qat["speedup"]:.2f}x the speed (batch 1; post-training INT8: '
        f'{int8["int8"] / 100:.3f}, {int8["calibration"]["images"]} '
        'calibration images)')
    with open(latency_dir / 'latency.json') as f:
        latency = json.load(f)
    results = latency['results']
    training = next(v for k, v in results.items() if 'training-time' in k)
    fused = results['fused']
    speedup = training['ms_per_batch'] / fused['ms_per_batch']
    summary['fused vs training-time speed'] = (
        f'{speedup:.2f}x '
        f'({fused["ms_per_batch"]:.1f} vs {training["ms_per_batch"]:.1f} ms '
        f'per batch of {latency["batch_size"]}, {latency["device"]})')
    numbers.update(fused_speedup=speedup)
    summary['artifacts'] = {
        'searched architecture': str(cls_dir / 'searched_arch.json'),
        'architecture figure': str(cls_dir / 'searched_arch.png'),
        'RepVGG baseline': str(baseline_dir / 'results.md'),
        'classifier checkpoint': last_checkpoint(cls_dir),
        'detector checkpoint': last_checkpoint(det_dir),
        'QAT detector checkpoint': last_checkpoint(work / 'detector_qat'),
        'fused detector': deployed['checkpoint'],
        'deploy config': deployed['config'],
        'ONNX model': deployed['onnx'],
        'mmdeploy SDK folder': deployed['sdk_dir'],
        'INT8 SDK folder (QAT)': qat['sdk_dir'],
        'INT8 SDK folder (post-training)': int8['sdk_dir'],
        'latency table': str(latency_dir / 'latency.md'),
        'latency chart': str(latency_dir / 'latency.png'),
    }
    summary['numbers'] = numbers
    return summary


if __name__ == '__main__':
    run_tool(main)
