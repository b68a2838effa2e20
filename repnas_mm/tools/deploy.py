#!/usr/bin/env python
"""Fuse a trained model, verify it, write it for deployment, and time it.

    python tools/deploy.py CONFIG CHECKPOINT --work-dir DIR
        [--onnx [--deploy-cfg configs/deploy/...py] [--export-tolerance 1e-3]]
        [--images FILE_OR_DIR ...] [--format {repnas,mmpretrain-repvgg}]
        [--tolerance 1e-4] [--benchmark]
        [--int8 [--int8-tolerance 1.0] [--calib-images 256]
                [--calib-method {minmax,entropy,percentile}]
                [--int8-fp32-layers K]]

Steps: load (the checkpoint's searched architecture first, then its weights)
-> fuse every ODBB (and turn every RefConv into the plain conv of its
refocused kernel) -> verify on real images (the config's test data, or
--images) that the fused model computes what the training-time one does
(exit 1 above the tolerance) -> write DIR/<config>_fused.pth and
DIR/<config>_deploy.py (deploy=True; tools/test.py evaluates them) ->
--format mmpretrain-repvgg: also a checkpoint + config for stock mmpretrain
RepVGG deploy -> --onnx: mmdeploy exports the fused model (its torch2onnx
and export2SDK, with a deploy config from configs/deploy/) into an mmdeploy
SDK folder (end2end.onnx, deploy.json, pipeline.json, detail.json in DIR),
moved into place only after mmdeploy's ONNX Runtime backend and its SDK
(mmdeploy_runtime) agreed with PyTorch on the real images (exit 1 otherwise).
--int8 (implies --onnx): ONNX Runtime static quantization of that export (QDQ,
per-channel INT8 weights), calibrated on --calib-images training images of the
config (a quantization-aware checkpoint, from a config with `quantize`: the
scales it trained, nothing calibrated), into an SDK folder DIR/int8/;
--int8-fp32-layers K keeps the K most sensitive layers fp32; fp32 and INT8
are evaluated on the config's test set with its own metric (top-1, or
CocoMetric bbox mAP) and timed in ONNX Runtime; an INT8 metric more than
--int8-tolerance points below fp32's exits 1. DIR/deploy_result.json records what was measured. A
deployment is written whole or not at all: any failed check leaves DIR as it
was. --benchmark then runs tools/benchmark_latency.py on the config.
"""
import argparse

from mmengine.config import DictAction

import repnas_mm  # noqa: F401
from repnas_mm.deploy import (ExportOptions, Int8Options, VerifyOptions,
                              deploy)
from repnas_mm.deploy.options import CALIBRATION_METHODS
from repnas_mm.runner import run_tool


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--work-dir', required=True)
    parser.add_argument(
        '--format', choices=('repnas', 'mmpretrain-repvgg'), default='repnas')
    parser.add_argument(
        '--benchmark',
        action='store_true',
        help='then time training-time / fused / ONNX / references')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config keys (written into the deploy config too)')
    verify = parser.add_argument_group('verification (VerifyOptions)')
    verify.add_argument(
        '--images',
        nargs='+',
        help='verify on these images/folders instead of the test data set')
    verify.add_argument(
        '--num-images', type=int, default=VerifyOptions.num_images)
    verify.add_argument(
        '--tolerance',
        type=float,
        default=VerifyOptions.tolerance,
        help='max relative error allowed (fused, RepVGG vs PyTorch)')
    export = parser.add_argument_group('export (ExportOptions)')
    export.add_argument(
        '--onnx',
        action='store_true',
        help='export through mmdeploy into an SDK folder (verified)')
    export.add_argument(
        '--deploy-cfg',
        help='mmdeploy deploy config (default: configs/deploy/'
        '{classification,detection}_onnxruntime_dynamic.py)')
    export.add_argument(
        '--export-tolerance',
        type=float,
        default=ExportOptions.tolerance,
        help='max gap of mmdeploy\'s ONNX Runtime backend and SDK to '
        'PyTorch: class scores, or top-10 detections\' scores and box '
        'corners (fraction of the image side)')
    int8 = parser.add_argument_group('INT8 (Int8Options)')
    int8.add_argument(
        '--int8',
        action='store_true',
        help='also quantize the export to INT8 (ONNX Runtime), evaluated')
    int8.add_argument(
        '--int8-tolerance',
        type=float,
        default=Int8Options.tolerance,
        help='most points of the config\'s metric INT8 may lose to fp32')
    int8.add_argument(
        '--calib-images',
        type=int,
        default=Int8Options.calib_images,
        help='training images to calibrate INT8 on')
    int8.add_argument(
        '--calib-method',
        choices=CALIBRATION_METHODS,
        default=Int8Options.calib_method,
        help='how activation ranges are calibrated')
    int8.add_argument(
        '--int8-fp32-layers',
        type=int,
        default=Int8Options.fp32_layers,
        metavar='K',
        help='keep the K layers whose quantization costs most in fp32 '
        '(a sensitivity pass: each layer quantized alone, the error of '
        'the outputs measured on calibration images; reported)')
    return parser.parse_args(argv)


def options(args):
    """The argument groups as deploy()'s option objects."""
    verify = VerifyOptions(args.images, args.num_images, args.tolerance)
    int8 = Int8Options(args.int8_tolerance, args.calib_images,
                       args.calib_method, args.int8_fp32_layers) \
        if args.int8 else None
    export = ExportOptions(args.deploy_cfg, args.export_tolerance) \
        if args.onnx or args.int8 else None
    return dict(verify=verify, export=export, int8=int8)


def main(argv=None):
    args = parse_args(argv)
    result = deploy(
        args.config,
        args.checkpoint,
        args.work_dir,
        fmt=args.format,
        cfg_options=args.cfg_options,
        **options(args))
    if args.benchmark:
        from repnas_mm.deploy.latency import run_latency_benchmark
        run_latency_benchmark(
            args.config,
            checkpoint=args.checkpoint,
            out_dir=args.work_dir,
            cfg_options=args.cfg_options)
    print('[deploy] done: ' + ', '.join(
        f'{k}={v:.2e}' if isinstance(v, float) else f'{k}={v}'
        for k, v in result.items() if k != 'int8'))
    return 0


if __name__ == '__main__':
    run_tool(main)
