#!/usr/bin/env python
"""Training cost of the search: plain vs presets vs RepNAS, offline vs online.

One training step (forward, backward, SGD step; Adam on alpha too for the
searches) of ODBBNet + a linear head, side by side in one process:

    plain            the kxk branch alone (a plain VGG-style network)
    repvgg           the RepVGG preset (kxk, 1x1, identity)
    search           the RepNAS search at --budget (noise, global ranking,
                     straight-through gates, alpha's Adam), offline branches
    search online    the same search, online blocks (OREPA form)
    search widths    the search, and every layer's width searched under half
                     the full-width network's multiply-adds (issue 32: the
                     full-width network runs, its outputs gated)
    full             every legal branch, offline
    full online      every legal branch, online

(a) step time: every repeat runs each configuration once (rotating the
    order); the table gives the median step and the median of the
    per-repeat ratios to plain.
(b) memory of one step, each configuration in a fresh process: the bytes
    autograd saves for backward (exact), the rise of the peak RSS (and
    CUDA's peak allocation on a GPU); ratios to plain.

CPU here; CUDA when present. Not a test: timings on shared machines are
noisy, so read the ratios, which are measured side by side.

    python tools/benchmark_search.py [--budget 66] [--batch-size 8] [--input-size 224]
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn

import repnas_mm  # noqa: F401
from repnas_mm.benchmark import (describe_device, markdown_table, peak_rss_kib,
                                 reset_peak_rss, saved_for_backward, sync)
from repnas_mm.models import ODBBNet
from repnas_mm.deploy.latency_table import multiply_add_table
from repnas_mm.search import SearchSpace
from repnas_mm.search.width_space import WidthSpace
from repnas_mm.search.optim import JointOptimizer


#: name -> (branches, searched, block form[, widths searched])
CONFIGS = {
    'plain': ('plain', False, 'standard'),
    'repvgg': ('repvgg', False, 'standard'),
    'search': ('full', True, 'standard'),
    'search online': ('full', True, 'online'),
    'search widths': ('full', True, 'standard', True),
    'full': ('full', False, 'standard'),
    'full online': ('full', False, 'online'),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='A0')
    parser.add_argument('--budget', type=int, default=66)
    parser.add_argument('--batch-size', type=int, default=None,
                        help='default: 32 on CUDA, 8 on CPU')
    parser.add_argument('--input-size', type=int, default=224)
    parser.add_argument('--repeats', type=int, default=9)
    parser.add_argument('--device', default=None)
    parser.add_argument('--configs', nargs='+', choices=list(CONFIGS),
                        default=list(CONFIGS),
                        help='configurations to run (plain is always one: '
                        'the ratios are to it)')
    parser.add_argument('--out', help='also write the results as JSON here')
    parser.add_argument('--memory-probe', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.configs = ['plain'] + [c for c in args.configs if c != 'plain']
    return args


class Net(nn.Module):
    """Backbone + global pooling + a linear head (a classifier's step)."""

    def __init__(self, arch, branches, form='standard'):
        super().__init__()
        self.backbone = ODBBNet(arch, branches=branches, form=form)
        channels = self.backbone.arch['channels'][-1]
        self.head = nn.Linear(channels, 1000)

    def forward(self, x):
        return self.head(self.backbone(x)[-1].mean((2, 3)))


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)


class Setup:
    """One configuration: its model, optimizer and (for searches) space."""

    def __init__(self, name, args, device):
        branches, searched, form, *widths = CONFIGS[name]
        torch.manual_seed(0)
        self.model = Net(args.arch, branches, form).to(device).train()
        self.space = self.widths = None
        weights = sgd(self.model.parameters())
        if searched:
            self.space = SearchSpace(self.model, budget=args.budget,
                                     seed=0).to(device)
            search_params = [self.space.alpha]
            if widths:
                backbone = self.model.backbone
                table = multiply_add_table(backbone, args.input_size,
                                           num_classes=1000)
                self.widths = WidthSpace(backbone, table, args.input_size,
                                         budget_ratio=0.5,
                                         num_classes=1000).to(device)
                search_params.append(self.widths.beta)
            adam = torch.optim.Adam(search_params, lr=1e-4,
                                    betas=(0.5, 0.999))
            self.optimizer = JointOptimizer(dict(weights=weights,
                                                 alpha=adam))
        else:
            self.optimizer = weights

    def branches(self):
        return sum(len(b.active) for b in self.model.backbone.blocks())

    def step(self, x, y):
        if self.space is not None:
            self.space.step()  # a new noisy mask, as every search iteration
        if self.widths is not None:
            self.widths.step()
        loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def inputs(args, device, batch):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, args.input_size, args.input_size, generator=gen)
    y = torch.randint(0, 1000, (batch, ), generator=gen)
    return x.to(device), y.to(device)


def time_steps(args, device, batch):
    """{name: [seconds per repeat]}, every configuration once per repeat."""
    x, y = inputs(args, device, batch)
    setups = {name: Setup(name, args, device) for name in args.configs}
    for setup in setups.values():  # warm-up
        for _ in range(2):
            setup.step(x, y)
    from tqdm import tqdm
    names = list(args.configs)
    times = {name: [] for name in names}
    for r in tqdm(range(args.repeats), desc='(a) step time', unit='round'):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            start = time.perf_counter()
            setups[name].step(x, y)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def memory_probe(args, name, device, batch):
    """One training step of one configuration; runs in its own process."""
    setup = Setup(name, args, device)
    x, y = inputs(args, device, batch)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    base_rss = reset_peak_rss()
    with saved_for_backward() as saved:
        setup.step(x, y)
    result = dict(
        config=name,
        branches=setup.branches(),
        saved_mib=saved.nbytes / 2**20,
        rss_step_mib=(peak_rss_kib() - base_rss) / 1024)
    if device.type == 'cuda':
        result['cuda_peak_mib'] = (torch.cuda.max_memory_allocated(device) -
                                   base_cuda) / 2**20
    return result


def main():
    args = parse_args()
    device = torch.device(args.device or (
        'cuda' if torch.cuda.is_available() else 'cpu'))
    batch = args.batch_size or (32 if device.type == 'cuda' else 8)
    if args.memory_probe:
        print(json.dumps(memory_probe(args, args.memory_probe, device, batch)))
        return

    where = describe_device(device)
    print(f'ODBBNet-{args.arch} training step; {where}; batch {batch}, '
          f'{args.input_size}x{args.input_size}, fp32; search budget '
          f'{args.budget}')
    times = time_steps(args, device, batch)
    memory = {}
    for name in args.configs:
        cmd = [sys.executable, __file__, '--memory-probe', name, '--arch',
               args.arch, '--budget', str(args.budget), '--batch-size',
               str(batch), '--input-size', str(args.input_size), '--device',
               device.type]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        memory[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f'(b) memory: {name} done', flush=True)

    plain_t, plain_m = times['plain'], memory['plain']
    headers = ['configuration', 'branches', 'step s (median)', 'vs plain',
               'saved for backward MiB', 'vs plain', 'step peak RSS MiB',
               'vs plain']
    if device.type == 'cuda':
        headers += ['CUDA peak MiB', 'vs plain']
    rows, summary = [], {}
    for name in args.configs:
        m = memory[name]
        ratio = statistics.median(t / p for t, p in zip(times[name], plain_t))
        label = name.replace('search', f'search@{args.budget}')
        row = [label, m['branches'], f'{statistics.median(times[name]):.3f}',
               f'{ratio:.2f}', f'{m["saved_mib"]:.0f}',
               f'{m["saved_mib"] / plain_m["saved_mib"]:.2f}',
               f'{m["rss_step_mib"]:.0f}',
               f'{m["rss_step_mib"] / plain_m["rss_step_mib"]:.2f}']
        if device.type == 'cuda':
            row += [f'{m["cuda_peak_mib"]:.0f}',
                    f'{m["cuda_peak_mib"] / plain_m["cuda_peak_mib"]:.2f}']
        rows.append(row)
        summary[name] = dict(step_ratio=ratio,
                             saved_ratio=m['saved_mib'] / plain_m['saved_mib'],
                             steps_per_second=1 / statistics.median(
                                 times[name]))
    print(f'\nmedians over {args.repeats} rounds; ratios: median of the '
          'per-round ratios to plain')
    print(markdown_table(headers, rows))
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(dict(device=where, batch_size=batch,
                           input_size=args.input_size, budget=args.budget,
                           repeats=args.repeats, step_seconds=times,
                           memory=memory, ratios=summary), f, indent=2)


if __name__ == '__main__':
    main()
