#!/usr/bin/env python
"""Conversion + fusion on a model of every timm family and OpenMMLab backbone.

    python tools/sweep_fusion.py [--select] [--only timm mmpretrain mmdet]
        [--models NAME ...] [--out-dir docs/results/fusion_sweep]

Each model (random weights, float64, eval mode): BN statistics and affine
parameters set as a trained model's might be, ``convert_to_odbb``, every
legal branch grown in every converted block, BN statistics set again
(branch BNs too), ``reparameterize_model``, outputs compared on a batch of
2 (96 px for timm, unless timm fixes the size; 64 px for OpenMMLab). A row
is ``exact`` (relative error <= 1e-10 and the fused state dict has the
model's own keys), ``unconverted`` (nothing converted; the reasons are
the conversion's warnings), ``no BatchNorm``, or a failure (``inexact``,
``error``, ``not built``). Exit 1 if any row failed.

The timm models are read from OUT/fusion_sweep.json (one per timm module,
the smallest with a BatchNorm, plus the models of issue 27); --select
chooses them again (every timm model built on the meta device, ~4 min).
Writes OUT/fusion_sweep.{md,json}; --models checks only those (timm names
or ``scope::Type``) and writes nothing.
"""
import argparse
import json
import os.path as osp
import platform
import sys
import time

import torch

import repnas_mm  # noqa: F401
from repnas_mm.benchmark import write_report
from repnas_mm.fusion_sweep import (TIMM_REPORTED, TOLERANCE,
                                    coverage_table, openmmlab_backbone_types,
                                    openmmlab_model, run_one,
                                    select_timm_models, timm_model)
from repnas_mm.runner import run_tool

DEFAULT_OUT = 'docs/results/fusion_sweep'
FAILED = ('inexact', 'error', 'not built', 'not run')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--select', action='store_true',
                        help='choose the timm models again (slow)')
    parser.add_argument('--only', nargs='+',
                        choices=('timm', 'mmpretrain', 'mmdet'),
                        default=('timm', 'mmpretrain', 'mmdet'))
    parser.add_argument('--models', nargs='+',
                        help='check only these and write nothing')
    parser.add_argument('--out-dir', default=DEFAULT_OUT)
    return parser.parse_args(argv)


def timm_rows(args, previous):
    """(family, model) pairs for timm: the selection and the reported."""
    if args.select or not previous:
        selection = select_timm_models()
    else:
        selection = {r['family']: dict(model=r['model'], reason=r['detail'])
                     for r in previous
                     if r['source'] == 'timm' and r['family'] != 'reported'}
    rows = [(family, entry['model'], entry['reason'])
            for family, entry in sorted(selection.items())]
    return rows + [('reported', name, '') for name in TIMM_REPORTED]


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    path = osp.join(args.out_dir, 'fusion_sweep.json')
    previous = []
    if osp.isfile(path):
        with open(path) as f:
            previous = json.load(f)['rows']
    jobs = []
    if args.models:
        for name in args.models:
            source = name.split('::')[0] if '::' in name else 'timm'
            build = (lambda n=name: openmmlab_model(n)) if '::' in name \
                else (lambda n=name: timm_model(n))
            jobs.append((source, name, name, build, ''))
    else:
        if 'timm' in args.only:
            for family, model, reason in timm_rows(args, previous):
                jobs.append(('timm', family, model,
                             (lambda n=model: timm_model(n)), reason))
        for key in openmmlab_backbone_types():
            scope = key.split('::')[0]
            if scope in args.only:
                jobs.append((scope, key.split('::')[1], key,
                             (lambda k=key: openmmlab_model(k)), ''))
    rows, start = [], time.time()
    for i, (source, family, model, build, reason) in enumerate(jobs, 1):
        t0 = time.time()
        if model is None:  # a timm module with no BatchNorm model
            result = dict(status='no BatchNorm', converted=0, left_alone=[],
                          error=None, stock_keys=None, dtype=None,
                          detail=reason)
        else:
            result = run_one(build)
        row = dict(source=source, family=family, model=model, **result,
                   seconds=round(time.time() - t0, 1))
        rows.append(row)
        error = '' if row['error'] is None else f' error {row["error"]:.1e}'
        print(f'[sweep] {i}/{len(jobs)} {source} {family} {model}: '
              f'{row["status"]}, {row["converted"]} converted{error} '
              f'({row["seconds"]} s) {row["detail"][:120]}', flush=True)
    failed = [r for r in rows if r['status'] in FAILED]
    print(f'[sweep] {len(rows)} models in {time.time() - start:.0f} s; '
          f'{len(failed)} failed')
    if not args.models:
        write_report(args.out_dir, 'fusion_sweep', report(rows),
                     dict(command=' '.join(['python', *sys.argv]),
                          tolerance={str(k).split('.')[-1]: v
                                     for k, v in TOLERANCE.items()},
                          versions=versions(), rows=rows), tag='sweep')
    return 1 if failed else 0


def versions() -> dict:
    import mmdet
    import mmpretrain
    import timm
    return dict(python=platform.python_version(), torch=torch.__version__,
                timm=timm.__version__, mmpretrain=mmpretrain.__version__,
                mmdet=mmdet.__version__)


def report(rows) -> str:
    counts = {}
    for row in rows:
        counts[row['status']] = counts.get(row['status'], 0) + 1
    return '\n'.join([
        '# Conversion and fusion on every family',
        '',
        'Made by `python tools/sweep_fusion.py` (float64, random weights, '
        'BN statistics as trained, every legal branch grown, statistics '
        'set again; exact = relative error <= 1e-10 (1e-5 for the float32 '
        'rows), at the outputs and around each converted pair, and the '
        'stock state dict keys). ' + ', '.join(
            f'{n} {s}' for s, n in sorted(counts.items())) + '.',
        '',
        coverage_table(rows),
    ])


if __name__ == '__main__':
    run_tool(main)
