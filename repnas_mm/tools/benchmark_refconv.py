#!/usr/bin/env python
"""RefConv fine-tuning against a plain fine-tune: accuracy, and training cost.

    python tools/benchmark_refconv.py accuracy CONFIG --work-dir DIR [--seeds 0 1 2]
        [--cfg-options ...]
    python tools/benchmark_refconv.py cost CONFIG [--input-size 32] [--batch-size N]
        [--repeats 10] [--out DIR]

CONFIG is a RefConv fine-tuning config (configs/demo/odbb_fmnist_refocus_cls.py,
configs/resnet18_cifar10_refocus.py); its baseline is the same config with
the RefConvConverted backbone replaced by the backbone it converts (the same
starting checkpoint, ``load_from``, schedule, data and seed).

accuracy: each seed trains the baseline and the RefConv model through
tools/train.py (``randomness.seed``); the RefConv model is then fused and
verified (tools/deploy.py's ``deploy``), and the starting checkpoint is
evaluated once. DIR/refconv.{md,json}: the validation top-1 after the last
epoch, mean ± sample std over seeds; finished runs are reused.

cost: one training step (forward, backward, SGD step) of both models, side
by side on random images of the config's batch size: round-robin step times
(median, and the median of per-round ratios), and each model's memory in a
fresh process (bytes autograd saves for backward, exact, without the
parameters and buffers, which exist anyway; the rise of the peak RSS; CUDA's
peak on a GPU). CPU here; CUDA when present.
"""
import argparse
import copy
import json
import os
import os.path as osp
import statistics
import subprocess
import sys

from mmengine.config import DictAction

import repnas_mm  # noqa: F401
from repnas_mm.atomic import atomic_path
from repnas_mm.benchmark import (describe_device, markdown_table, mean_std,
                                 peak_rss_kib, reset_peak_rss,
                                 saved_for_backward, sync, time_round_robin,
                                 write_report)
from repnas_mm.config import read_config, unwrap_converted
from repnas_mm.errors import UserError
from repnas_mm.experiments import (last_checkpoint, read_scalars, read_test_metrics,
                                   run_logged, tool_command)
from repnas_mm.rep import RefConv
from repnas_mm.runner import run_tool

METHODS = ('baseline', 'refconv')


def method_config(cfg, method):
    """The RefConv config itself, or its baseline (no RefConvs)."""
    baseline = copy.deepcopy(cfg)
    unwrap_converted(baseline.model, ('RefConvConverted', ))
    if baseline.model == cfg.model:
        raise UserError(f'{cfg.filename} has no RefConvConverted backbone: '
                        'pass a RefConv fine-tuning config')
    return baseline if method == 'baseline' else copy.deepcopy(cfg)


# -- accuracy --------------------------------------------------------------------------
def accuracy(args):
    from repnas_mm.deploy import deploy
    cfg = read_config(args.config, args.cfg_options)
    method_config(cfg, 'refconv')  # a RefConv config, or one line
    if not cfg.get('load_from') or not osp.isfile(cfg.load_from):
        raise UserError(f'the checkpoint both fine-tunes start from is missing: '
                        f'load_from={cfg.get("load_from")!r} (train it first, or '
                        '--cfg-options load_from=...)')
    start = _start_accuracy(cfg, args.work_dir)
    runs = {m: [] for m in METHODS}
    for seed in args.seeds:
        for method in METHODS:
            run_dir = osp.join(args.work_dir, 'runs', method, f'seed_{seed}')
            result_path = osp.join(run_dir, 'result.json')
            if not osp.isfile(result_path):
                print(f'[refconv] {method}, seed {seed}: training', flush=True)
                os.makedirs(run_dir, exist_ok=True)
                cfg_path = osp.join(run_dir, 'config.py')
                run_cfg = method_config(cfg, method)
                run_cfg.randomness = dict(seed=seed)
                with atomic_path(cfg_path, suffix='.py') as tmp:
                    run_cfg.dump(tmp)
                train_dir = osp.join(run_dir, 'train')
                run_logged(tool_command('train', cfg_path, '--work-dir', train_dir),
                           osp.join(run_dir, 'train.log'))
                records = read_scalars(train_dir)
                val = [r for r in records if 'accuracy/top1' in r]
                steps = [r['time'] for r in records if 'loss' in r and 'time' in r]
                result = dict(method=method, seed=seed, top1=val[-1]['accuracy/top1'],
                              step_time=statistics.median(steps))
                if method == 'refconv':
                    checkpoint = last_checkpoint(train_dir)
                    with open(osp.join(run_dir, 'deploy.log'), 'w') as f:
                        deployed = deploy(cfg_path, checkpoint, osp.join(run_dir, 'fused'),
                                          log=lambda line: f.write(line + '\n'))
                    result['fused_error'] = deployed['fused_error']
                with atomic_path(result_path) as tmp, open(tmp, 'w') as f:
                    json.dump(result, f, indent=2)
            with open(result_path) as f:
                runs[method].append(json.load(f))
            r = runs[method][-1]
            print(f'[refconv] {method}, seed {seed}: top-1 {r["top1"]:.2f}', flush=True)
    summary = {m: dict(top1=mean_std([r['top1'] for r in rs]),
                       step_time=statistics.median(r['step_time'] for r in rs))
               for m, rs in runs.items()}
    gains = [r['top1'] - b['top1'] for r, b in zip(runs['refconv'], runs['baseline'])]
    summary['gain'] = mean_std(gains)
    rows = [['start (the loaded checkpoint)', f'{start:.2f}', '', '']]
    rows += [[m, f'{s["top1"][0]:.2f} ± {s["top1"][1]:.2f}',
              ', '.join(f'{r["top1"]:.2f}' for r in runs[m]),
              f'{s["step_time"]:.3f}'] for m, s in summary.items() if m != 'gain']
    epochs = cfg.train_cfg.max_epochs
    report = (f'`{args.config}`: {epochs} epochs from `{cfg.load_from}`; seeds '
              f'{", ".join(map(str, args.seeds))}; validation top-1 after the last epoch '
              '(mean ± sample std). Step time: median of the training log, runs one '
              'after another (`cost` measures it side by side).\n\n'
              + markdown_table(['fine-tune', 'top-1', 'per seed', 'step s (log)'], rows)
              + f'\n\nRefConv − baseline, paired by seed: {summary["gain"][0]:+.2f} ± '
              f'{summary["gain"][1]:.2f} points; RefConv fused into the stock layout with '
              f'max relative error {max(r["fused_error"] for r in runs["refconv"]):.1e}.\n')
    write_report(args.work_dir, 'refconv', report,
                 dict(config=args.config, load_from=cfg.load_from, epochs=epochs,
                      seeds=args.seeds, start_top1=start, summary=summary, runs=runs),
                 'refconv')


def _start_accuracy(cfg, work_dir):
    """Top-1 of the starting checkpoint (the baseline model, tools/test.py)."""
    path = osp.join(work_dir, 'start.json')
    if not osp.isfile(path):
        print(f'[refconv] evaluating the starting checkpoint {cfg.load_from}', flush=True)
        start_dir = osp.join(work_dir, 'start')
        os.makedirs(start_dir, exist_ok=True)
        cfg_path = osp.join(start_dir, 'config.py')
        with atomic_path(cfg_path, suffix='.py') as tmp:
            method_config(cfg, 'baseline').dump(tmp)
        run_logged(tool_command('test', cfg_path, cfg.load_from, '--work-dir',
                                osp.join(start_dir, 'test')),
                   osp.join(start_dir, 'test.log'))
        top1 = read_test_metrics(osp.join(start_dir, 'test'))['accuracy/top1']
        with atomic_path(path) as tmp, open(tmp, 'w') as f:
            json.dump(dict(checkpoint=cfg.load_from, top1=top1), f)
    with open(path) as f:
        return json.load(f)['top1']


# -- cost ------------------------------------------------------------------------------
class Step:
    """One model of the config and its SGD step on a fixed random batch."""

    def __init__(self, cfg, method, batch, input_size, device):
        import torch
        from mmengine.registry import MODELS, init_default_scope
        from mmpretrain.structures import DataSample
        init_default_scope(cfg.get('default_scope', 'mmpretrain'))
        model_cfg = method_config(cfg, method).model
        self.model = MODELS.build(model_cfg).to(device).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        self.frozen = sum(m.weight.numel() for m in self.model.modules()
                          if isinstance(m, RefConv))  # the base kernels
        self.optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(batch, 3, input_size, input_size,
                                  generator=generator).to(device)
        classes = model_cfg.head.num_classes
        self.samples = [DataSample().set_gt_label(i % classes).to(device)
                        for i in range(batch)]

    def __call__(self):
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.model(self.inputs, self.samples, mode='loss')
        sum(losses.values()).backward()
        self.optimizer.step()


def cost(args):
    import torch
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    cfg = read_config(args.config, args.cfg_options)
    batch = args.batch_size or cfg.train_dataloader.batch_size
    if args.memory_probe:
        print(json.dumps(_memory_probe(cfg, args.memory_probe, batch, args.input_size,
                                       device)))
        return
    where = describe_device(device)
    print(f'[refconv] {args.config}: training step, batch {batch}, '
          f'{args.input_size}x{args.input_size}; {where}', flush=True)
    steps = {m: Step(cfg, m, batch, args.input_size, device) for m in METHODS}
    timings = time_round_robin(steps, batch, device, repeats=args.repeats, iters=3,
                               inference=False)
    ratio = statistics.median(r / b for r, b in zip(timings['refconv'].seconds,
                                                     timings['baseline'].seconds))
    memory = {}
    for method in METHODS:
        cmd = [sys.executable, __file__, 'cost', args.config, '--memory-probe', method,
               '--input-size', str(args.input_size), '--batch-size', str(batch),
               '--device', device.type]
        if args.cfg_options:
            cmd += ['--cfg-options'] + [f'{k}={v}' for k, v in args.cfg_options.items()]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise UserError(f'the memory probe of {method} failed: {out.stderr[-500:]}')
        memory[method] = json.loads(out.stdout.strip().splitlines()[-1])
    headers = ['fine-tune', 'trainable params (M)', 'frozen kernels (M)', 'step s (median)',
               'saved for backward MiB (not params)', 'step peak RSS MiB']
    if device.type == 'cuda':
        headers.append('CUDA peak MiB')
    rows = []
    for method in METHODS:
        m = memory[method]
        row = [method, f'{steps[method].trainable / 1e6:.3f}',
               f'{steps[method].frozen / 1e6:.3f}', f'{timings[method].median:.4f}',
               f'{m["saved_mib"]:.1f}',
               f'{m["rss_step_mib"]:.0f}']
        if device.type == 'cuda':
            row.append(f'{m["cuda_peak_mib"]:.0f}')
        rows.append(row)
    b, r = memory['baseline'], memory['refconv']
    report = (f'`{args.config}`: one training step, batch {batch}, '
              f'{args.input_size}x{args.input_size}, fp32; {where}; {args.repeats} '
              'round-robin repeats (3 steps each), medians.\n\n'
              + markdown_table(headers, rows)
              + f'\n\nRefConv / baseline: step time {ratio:.2f}x (median of per-repeat '
              f'ratios), saved for backward {r["saved_mib"] / b["saved_mib"]:.3f}x, '
              f'step peak RSS {r["rss_step_mib"] / max(b["rss_step_mib"], 1e-9):.2f}x.\n')
    data = dict(config=args.config, device=where, batch_size=batch,
                input_size=args.input_size, repeats=args.repeats,
                step_seconds={m: timings[m].seconds for m in METHODS},
                step_ratio=ratio, memory=memory,
                trainable={m: steps[m].trainable for m in METHODS},
                frozen={m: steps[m].frozen for m in METHODS})
    if args.out:
        write_report(args.out, 'refconv_cost', report, data, 'refconv')
    else:
        print(report)


def _memory_probe(cfg, method, batch, input_size, device):
    """One training step of one model; runs in its own process."""
    import torch
    step = Step(cfg, method, batch, input_size, device)
    step()  # the optimizer's state and the allocator's pools exist now
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    base_rss = reset_peak_rss()
    # Parameters and buffers (the frozen kernels too) exist anyway: count
    # what a step adds, e.g. a RefConv's refocused kernel W_t.
    state = list(step.model.parameters()) + list(step.model.buffers())
    with saved_for_backward(exclude=state) as saved:
        step()
    sync(device)
    result = dict(method=method, saved_mib=saved.nbytes / 2**20,
                  rss_step_mib=(peak_rss_kib() - base_rss) / 1024)
    if device.type == 'cuda':
        result['cuda_peak_mib'] = (torch.cuda.max_memory_allocated(device)
                                   - base_cuda) / 2**20
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='mode', required=True)
    acc = sub.add_parser('accuracy', help='baseline vs RefConv fine-tune, over seeds')
    acc.add_argument('config')
    acc.add_argument('--work-dir', required=True)
    acc.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    acc.add_argument('--cfg-options', nargs='+', action=DictAction)
    cst = sub.add_parser('cost', help='training step time and memory, side by side')
    cst.add_argument('config')
    cst.add_argument('--input-size', type=int, default=32)
    cst.add_argument('--batch-size', type=int)
    cst.add_argument('--repeats', type=int, default=10)
    cst.add_argument('--device')
    cst.add_argument('--out', help='folder for refconv_cost.{md,json}')
    cst.add_argument('--cfg-options', nargs='+', action=DictAction)
    cst.add_argument('--memory-probe', choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    {'accuracy': accuracy, 'cost': cost}[args.mode](args)


if __name__ == '__main__':
    run_tool(main)
