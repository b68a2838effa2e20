#!/usr/bin/env python
"""Measure the latency table of an ODBBNet's fused layers (issue 32).

    python tools/latency_table.py A0 --out work_dirs/latency/a0_ort_cpu.json
    python tools/latency_table.py CONFIG [--out FILE] [--input-size 224]
        [--batch 1] [--threads N] [--device cpu|cuda]
        [--fractions 0.25 0.5 0.75 1.0] [--num-classes 1000] [--check]

Every layer of the network (conv + ReLU, fused) at every width of a grid
(the fractions of its width, multiples of 8) and the classifier head are
timed in ONNX Runtime and cached in FILE (JSON keyed by runtime, version,
provider, threads and batch; a second run measures only what is missing; a
file of another key is refused). --check also times the full-width fused
network, and the one at the smallest fraction of every width, and prints
the table's predictions beside the measurements. For a
config whose RepNASHook searches widths, FILE and the input size default
to its ``widths=dict(table=..., input_size=...)``.
"""
import argparse
import statistics

import torch

import repnas_mm  # noqa: F401
from repnas_mm.deploy.latency_table import (LatencyTable, PlainClassifier,
                                            grid_shapes, network_shapes,
                                            runtime_key, time_module)
from repnas_mm.runner import run_tool


def backbone_of(target: str, cfg_options=None):
    """A fused ODBBNet of an arch name or of a config's backbone, the
    config's number of classes (None for an arch name or a detector), and
    its width search settings (RepNASHook's ``widths``, or {})."""
    from repnas_mm.models import ODBBNet
    if target in ODBBNet.arch_settings:
        return ODBBNet(target, deploy=True), None, {}
    from mmengine.registry import MODELS, init_default_scope

    from repnas_mm.config import read_config
    cfg = read_config(target, cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    backbone = dict(cfg.model.backbone, deploy=True, init_cfg=None)
    if backbone.get('type') != 'ODBBNet':
        from repnas_mm.errors import UserError
        raise UserError(f'{target}: the latency table is for ODBBNet '
                        f'backbones, this config has {backbone.get("type")}')
    head = cfg.model.get('head') or {}
    hooks = [h for h in cfg.get('custom_hooks', [])
             if h.get('type') == 'RepNASHook' and h.get('widths')]
    widths = dict(hooks[0]['widths']) if hooks else {}
    return MODELS.build(backbone), head.get('num_classes'), widths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('target', help='an ODBBNet arch (A0, ...) or a config')
    parser.add_argument('--out', help='the table (JSON; default: the '
                        'config\'s widths=dict(table=...))')
    parser.add_argument('--input-size', type=int,
                        help='default: the config\'s widths input_size, '
                        'or 224')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int)
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument('--fractions', type=float, nargs='+',
                        default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument('--num-classes', type=int,
                        help='classifier head (default: the config\'s)')
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--check', action='store_true',
                        help='also time whole networks at the grid\'s '
                        'smallest fraction and at full width')
    parser.add_argument('--calibrate', action='store_true',
                        help='time whole networks at every fraction and '
                        'fit the prediction to them (stored in FILE)')
    args = parser.parse_args(argv)
    net, classes, search = backbone_of(args.target)
    classes = args.num_classes or classes
    args.out = args.out or search.get('table')
    args.input_size = args.input_size or search.get('input_size', 224)
    if not args.out:
        from repnas_mm.errors import UserError
        raise UserError('--out is needed: the target names no table (a '
                        'config with RepNASHook(widths=dict(table=...)))')
    key = runtime_key(args.device, args.threads, args.batch)
    table = LatencyTable.load(args.out, key)
    shapes = grid_shapes(net, args.input_size, args.fractions, classes)
    print(f'[latency table] {len(shapes)} shapes on the grid, '
          f'{len(table.missing(shapes))} to measure; key {key}', flush=True)
    try:
        table.measure(shapes, args.repeats,
                      log=lambda line: print(line, flush=True))
    finally:
        table.save(args.out)  # what was measured is kept
    full = network_shapes(net, args.input_size, classes)
    print(f'[latency table] {args.out}: {len(table.entries)} shapes; '
          f'full-width network predicted {table.predict(full):.3f} ms')
    if args.calibrate:
        table.calibration = None
        points = [check(net, table, key, args, classes, ratio)
                  for ratio in sorted(set(args.fractions) | {1.0})]
        table.calibrate([(p, m) for p, m in points])
        table.save(args.out)
        cal = table.calibration
        fitted = [(cal['scale'] * p + cal['offset']) / m for p, m in points]
        print(f'[latency table] calibrated: measured = {cal["scale"]:.4f} x '
              f'layer sum + {cal["offset"]:.4f} ms; predicted / measured of '
              'those networks now ' + ', '.join(f'{r:.3f}' for r in fitted),
              flush=True)
    if args.check:
        for ratio in sorted({1.0, min(args.fractions)}, reverse=True):
            check(net, table, key, args, classes, ratio)
        for seed in (0, 1):  # networks the calibration never saw
            check(net, table, key, args, classes, f'random {seed}')
    return 0


def check(net, table, key, args, classes, ratio):
    """Time the network at ``ratio`` of every width (rounded to the grid;
    ``'random <seed>'``: a seeded random grid width per layer) and print
    the table's prediction beside the measurement; (layer sum, measured)."""
    from repnas_mm.deploy.latency_table import grid_widths
    from repnas_mm.models import ODBBNet
    if isinstance(ratio, str):
        gen = torch.Generator().manual_seed(int(ratio.split()[1]))
        grids = [grid_widths(w, args.fractions) for w in net.widths]
        widths = [g[int(torch.randint(len(g), (1, ), generator=gen))]
                  for g in grids]
    else:
        widths = [grid_widths(w, (ratio, ))[0] for w in net.widths]
    narrow = ODBBNet(dict(net.arch, name=net.arch_name),
                     in_channels=net.stem.conv.in_channels, widths=widths,
                     kernel_size=net.kernel_size, deploy=True)
    predicted = table.predict(network_shapes(narrow, args.input_size,
                                             classes))
    layer_sum = table.layer_sum(network_shapes(narrow, args.input_size,
                                               classes))
    example = torch.randn(args.batch, net.stem.conv.in_channels,
                          args.input_size, args.input_size)
    times = time_module(PlainClassifier(narrow, classes), example, key,
                        args.repeats, 0.2)
    measured = 1e3 * statistics.median(times)
    spread = (max(times) - min(times)) / statistics.median(times)
    what = ratio if isinstance(ratio, str) else f'x{ratio:g}'
    print(f'[latency table] widths {what}: predicted {predicted:.3f} ms,'
          f' measured {measured:.3f} ms (median of {len(times)} repeats, '
          f'spread {spread:.1%}); predicted / measured = '
          f'{predicted / measured:.3f}', flush=True)
    return layer_sum, measured


if __name__ == '__main__':
    run_tool(main)
