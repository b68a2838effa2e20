#!/usr/bin/env python
"""What repnas_mm does on a GPU: the test suite, latency, the search, DCN.

    make gpu-check                       # = python tools/gpu_check.py
    python tools/gpu_check.py [--out-dir docs/results/gpu] [--skip-tests]
    python tools/gpu_check.py --quick --device cpu --skip-tests  # tiny, CPU

For a person with an NVIDIA GPU; one script, one report. Steps:

1. ``make test`` (the whole suite, on this machine; skipped with --skip-tests);
2. latency (tools/benchmark_latency.py's measurement): training-time vs fused
   ODBBNet-A0 vs stock RepVGG-A0 deploy vs ResNet-18/50 classifiers, 224 px,
   batch 1, 32 and 128, fp32 and fp16, with each model's CUDA peak memory;
3. the A0 search at 224 px, batch 32 (tools/benchmark_search.py, 100 steps
   each of plain, the RepNAS search offline, and online): steps/s, and the
   CUDA peak memory of one step;
4. CenterNet with the ODBB-A0 backbone and its DCNv2 neck
   (configs/centernet_odbb_a0_coco.py): forward and backward on the GPU, which
   needs mmcv's CUDA ops (ms per step, CUDA peak memory).

Writes OUT/gpu_check.md and OUT/gpu_check.json, with the GPU's name and the
versions. Without a visible GPU it stops with one line (--quick --device cpu
runs every step at tiny sizes on the CPU: a check of the script itself).
"""
import argparse
import json
import os.path as osp
import platform
import re
import subprocess
import tempfile
import time

import torch

import repnas_mm  # noqa: F401
from repnas_mm.benchmark import describe_device, markdown_table, write_report
from repnas_mm.errors import UserError
from repnas_mm.experiments import tool_command
from repnas_mm.resources import config_path
from repnas_mm.runner import run_tool

# ``make test`` needs a checkout (repnas_mm/tools/ -> the repository).
REPO = osp.dirname(osp.dirname(osp.dirname(osp.realpath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out-dir', default='docs/results/gpu')
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--skip-tests', action='store_true',
                        help='do not run make test')
    parser.add_argument('--quick', action='store_true',
                        help='tiny sizes and few repeats (checks the script)')
    return parser.parse_args(argv)


def sizes(quick: bool, cuda: bool) -> dict:
    if quick:
        return dict(input_size=64, batches=(1, 2), repeats=2, iters=1,
                    search_steps=2, search_batch=2, det_size=128,
                    det_batch=1, det_steps=2,
                    dtypes=('float32', 'float16') if cuda else ('float32', ))
    return dict(input_size=224, batches=(1, 32, 128), repeats=10, iters=3,
                search_steps=100, search_batch=32, det_size=512,
                det_batch=16, det_steps=10, dtypes=('float32', 'float16'))


def run_make_test() -> dict:
    """``make test`` here: its exit status, wall time and summary line."""
    if not osp.isfile(osp.join(REPO, 'Makefile')):
        raise UserError('the test suite runs from a repnas_mm checkout; '
                        'an installed package: pass --skip-tests')
    start = time.time()
    proc = subprocess.run(['make', 'test'], cwd=REPO, capture_output=True,
                          text=True)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    summary = next((line.strip('= ') for line in reversed(lines)
                    if re.search(r'\d+ (passed|failed)', line)), '')
    return dict(returncode=proc.returncode, seconds=time.time() - start,
                summary=summary)


def latency(device: str, size: dict, work: str) -> list:
    """One row per (dtype, batch, model)."""
    from repnas_mm.deploy.latency import run_latency_benchmark
    rows = []
    for dtype in size['dtypes']:
        for batch in size['batches']:
            results = run_latency_benchmark(
                'A0', out_dir=osp.join(work, f'latency_{dtype}_{batch}'),
                batch_size=batch, input_size=size['input_size'],
                repeats=size['repeats'], iters=size['iters'], device=device,
                onnx=False, dtype=dtype, log=lambda *a: None)
            for model, r in results.items():
                rows.append(dict(dtype=dtype, batch=batch, model=model, **r))
    return rows


def search(device: str, size: dict, work: str) -> dict:
    """tools/benchmark_search.py: plain, search, search online."""
    out = osp.join(work, 'search.json')
    subprocess.run(tool_command(
        'benchmark_search', '--configs', 'plain', 'search', 'search online', '--device', device,
        '--batch-size', str(size['search_batch']), '--input-size',
        str(size['input_size']), '--repeats', str(size['search_steps']),
        '--out', out), check=True, capture_output=True, text=True)
    with open(out) as f:
        data = json.load(f)
    return {
        name: dict(steps_per_second=data['ratios'][name]['steps_per_second'],
                   step_ratio=data['ratios'][name]['step_ratio'],
                   branches=data['memory'][name]['branches'],
                   cuda_peak_mib=data['memory'][name].get('cuda_peak_mib'))
        for name in data['ratios']
    }


def centernet_dcn(device: str, size: dict) -> dict:
    """Forward + backward of CenterNet (ODBB-A0, DCNv2 neck) on ``device``."""
    from mmcv.ops import ModulatedDeformConv2d, get_compiling_cuda_version
    from mmengine.config import Config

    from repnas_mm.deploy.model import build_model_unchecked
    from repnas_mm.runner import check_cuda_ops
    cfg = Config.fromfile(config_path('centernet_odbb_a0_coco.py'))
    cfg.merge_from_dict({'model.backbone.branches': 'repvgg',
                         'model.backbone.init_cfg': None})
    model = build_model_unchecked(cfg).to(device)
    model.train()
    if device.startswith('cuda'):
        check_cuda_ops(model, cfg)  # one line if mmcv lacks CUDA ops
    dcn = [m for m in model.modules() if isinstance(m, ModulatedDeformConv2d)]
    x = torch.randn(size['det_batch'], 3, size['det_size'], size['det_size'],
                    device=device)
    cuda = torch.device(device).type == 'cuda'

    def step():
        outputs = model(x, mode='tensor')
        loss = sum(t.float().mean() for level in outputs for t in level)
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up (cuDNN, allocator)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(size['det_steps']):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    return dict(
        dcn_layers=len(dcn), batch=size['det_batch'],
        input_size=size['det_size'],
        ms_per_step=1e3 * (time.perf_counter() - start) / size['det_steps'],
        cuda_peak_mib=(torch.cuda.max_memory_allocated(device) / 2**20
                       if cuda else None),
        mmcv_cuda_ops=get_compiling_cuda_version())


def versions(device: str) -> dict:
    import mmcv
    import mmdet
    import mmengine
    import mmpretrain
    return dict(device=describe_device(device),
                python=platform.python_version(),
                torch=torch.__version__, torch_cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), mmcv=mmcv.__version__,
                mmengine=mmengine.__version__, mmdet=mmdet.__version__,
                mmpretrain=mmpretrain.__version__)


def report(data: dict) -> str:
    lines = [f'# GPU check: {data["versions"]["device"]}', '',
             'Made by `python tools/gpu_check.py' +
             (' --quick' if data['quick'] else '') + '` (`make gpu-check`); '
             + ', '.join(f'{k} {v}' for k, v in data['versions'].items()
                         if k != 'device') + '.', '']
    tests = data.get('make_test')
    if tests:
        lines += ['## make test', '',
                  f'exit {tests["returncode"]}, {tests["seconds"]:.0f} s: '
                  f'{tests["summary"]}', '']
    lines += ['## Latency (ODBBNet-A0 classifier, all branches)', '',
              markdown_table(
                  ['dtype', 'batch', 'model', 'ms / batch', 'images / s',
                   'speed vs fused', 'CUDA peak MiB'],
                  [[r['dtype'], r['batch'], r['model'],
                    f'{r["ms_per_batch"]:.2f}',
                    f'{r["images_per_second"]:.1f}', f'{r["vs_fused"]:.2f}',
                    _mib(r.get('cuda_peak_mib'))] for r in data['latency']]),
              '', '## Search step (A0, budget 66)', '',
              markdown_table(
                  ['configuration', 'branches', 'steps / s', 'vs plain',
                   'CUDA peak MiB'],
                  [[name, r['branches'], f'{r["steps_per_second"]:.2f}',
                    f'{r["step_ratio"]:.2f}', _mib(r['cuda_peak_mib'])]
                   for name, r in data['search'].items()]),
              '', '## CenterNet with DCNv2 (forward + backward)', '']
    det = data['centernet_dcn']
    lines.append(f'{det["dcn_layers"]} DCNv2 layers, batch {det["batch"]}, '
                 f'{det["input_size"]} px: {det["ms_per_step"]:.1f} ms per '
                 f'step, CUDA peak {_mib(det["cuda_peak_mib"])} MiB; mmcv '
                 f'CUDA ops: {det["mmcv_cuda_ops"]}')
    return '\n'.join(lines) + '\n'


def _mib(value) -> str:
    return '-' if value is None else f'{value:.0f}'


def main(argv=None):
    args = parse_args(argv)
    cuda = torch.device(args.device).type == 'cuda'
    if cuda and not torch.cuda.is_available():
        raise UserError('gpu_check measures a GPU, and no CUDA device is '
                        'visible (torch.cuda.is_available() is False); '
                        '--quick --device cpu runs its steps tiny on the CPU')
    if not cuda and not args.quick:
        raise UserError('--device cpu is for --quick (a check of the script)')
    size = sizes(args.quick, cuda)
    data = dict(quick=args.quick, versions=versions(args.device))
    print(f'[gpu_check] {data["versions"]["device"]}', flush=True)
    if not args.skip_tests:
        print('[gpu_check] 1/4 make test', flush=True)
        data['make_test'] = run_make_test()
    with tempfile.TemporaryDirectory(prefix='gpu_check_') as work:
        print('[gpu_check] 2/4 latency', flush=True)
        data['latency'] = latency(args.device, size, work)
        print('[gpu_check] 3/4 search steps', flush=True)
        data['search'] = search(args.device, size, work)
    print('[gpu_check] 4/4 CenterNet with DCNv2', flush=True)
    data['centernet_dcn'] = centernet_dcn(args.device, size)
    write_report(args.out_dir, 'gpu_check', report(data), data,
                 tag='gpu_check')
    failed = data.get('make_test', {}).get('returncode', 0)
    return 1 if failed else 0


if __name__ == '__main__':
    run_tool(main)
