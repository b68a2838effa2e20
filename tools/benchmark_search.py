#!/usr/bin/env python
"""Cost of the RepNAS search machinery, and the memory its budget saves.

(a) time of one training step (forward, backward, optimizer step) of
    ODBBNet-A0 + a linear head under the search at ``--budget`` (noise,
    global ranking, straight-through gates, SGD + Adam on alpha) vs the same
    network with *that step's* mask fixed and no search machinery (plain SGD).
    Paired per repeat; median of the per-repeat ratios.
(b) training memory at the budget vs the ``full`` supernet (every legal
    branch) vs the ``repvgg`` preset: the bytes autograd saves for backward
    (exact), and the peak resident memory of one training step measured in a
    fresh process per configuration (and CUDA's peak allocation on a GPU).

CPU here; CUDA when present. Not a test: timings on shared machines are
noisy, so read the ratios, which are measured side by side.

    python tools/benchmark_search.py [--budget 66] [--batch-size 8] [--input-size 224]
"""
import argparse
import json
import os
import os.path as osp
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn

import repnas_mm  # noqa: F401
from repnas_mm.benchmark import describe_device, markdown_table, sync
from repnas_mm.models import ODBBNet
from repnas_mm.search import SearchSpace
from repnas_mm.search.optim import JointOptimizer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='A0')
    parser.add_argument('--budget', type=int, default=66)
    parser.add_argument('--batch-size', type=int, default=None,
                        help='default: 32 on CUDA, 8 on CPU')
    parser.add_argument('--input-size', type=int, default=224)
    parser.add_argument('--repeats', type=int, default=9)
    parser.add_argument('--device', default=None)
    parser.add_argument('--out', help='also write the results as JSON here')
    parser.add_argument('--memory-probe', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


class Net(nn.Module):
    """Backbone + global pooling + a linear head (a classifier's step)."""

    def __init__(self, arch, branches):
        super().__init__()
        self.backbone = ODBBNet(arch, branches=branches)
        channels = self.backbone.arch['channels'][-1]
        self.head = nn.Linear(channels, 1000)

    def forward(self, x):
        return self.head(self.backbone(x)[-1].mean((2, 3)))


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)


def train_step(model, optimizer, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_search_overhead(args, device, batch):
    """Paired timings: (search step, fixed-mask step) per repeat."""
    torch.manual_seed(0)
    model = Net(args.arch, 'full').to(device).train()
    space = SearchSpace(model, budget=args.budget, seed=0).to(device)
    adam = torch.optim.Adam([space.alpha], lr=1e-4, betas=(0.5, 0.999))
    joint = JointOptimizer(dict(weights=sgd(model.parameters()), alpha=adam))
    plain = sgd(model.parameters())
    x = torch.randn(batch, 3, args.input_size, args.input_size, device=device)
    y = torch.randint(0, 1000, (batch, ), device=device)

    def search_step():
        space.step()
        train_step(model, joint, x, y)

    def fixed_step():
        # The same branches, no noise, no ranking, no gates, no alpha.
        space.apply(space.mask, None)
        train_step(model, plain, x, y)

    for _ in range(2):  # warm-up
        search_step()
        fixed_step()
    from tqdm import tqdm
    pairs = []
    for _ in tqdm(range(args.repeats), desc='(a) step time', unit='pair'):
        sync(device)
        start = time.perf_counter()
        search_step()
        sync(device)
        t_search = time.perf_counter() - start
        space.apply(space.mask, None)  # (outside the timed region)
        sync(device)
        start = time.perf_counter()
        fixed_step()
        sync(device)
        pairs.append((t_search, time.perf_counter() - start))
    return pairs


CONFIGS = {
    'budget': lambda a: ('full', a.budget),
    'full': lambda a: ('full', None),
    'repvgg': lambda a: ('repvgg', None),
}


def _status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def reset_peak_rss():
    """Reset the process's peak RSS to its current RSS; return it (KiB).

    Linux's /proc/self/clear_refs accepts 5 for that; elsewhere the peak
    cannot be reset and ru_maxrss (peak since start) is the best we have.
    """
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return _status_kib('VmRSS')
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_kib():
    try:
        return _status_kib('VmHWM')
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_probe(args, name, device, batch):
    """One training step of one configuration; runs in its own process."""
    branches, budget = CONFIGS[name](args)
    torch.manual_seed(0)
    model = Net(args.arch, branches).to(device).train()
    space = None
    if budget is not None:
        space = SearchSpace(model, budget=budget, seed=0).to(device)
        space.step()
    params = list(model.parameters()) + ([space.alpha] if space else [])
    optimizer = sgd(params)
    x = torch.randn(batch, 3, args.input_size, args.input_size, device=device)
    y = torch.randint(0, 1000, (batch, ), device=device)
    kept = sum(len(b.active) for b in model.backbone.blocks())

    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    base_rss = reset_peak_rss()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    result = dict(
        config=name,
        branches=kept,
        saved_mib=sum(saved.values()) / 2**20,
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
          f'{args.input_size}x{args.input_size}, fp32')
    pairs = time_search_overhead(args, device, batch)
    ratio = statistics.median(s / f for s, f in pairs)
    t_search = statistics.median(s for s, _ in pairs)
    t_fixed = statistics.median(f for _, f in pairs)

    memory = []
    for name in CONFIGS:
        cmd = [sys.executable, __file__, '--memory-probe', name, '--arch',
               args.arch, '--budget', str(args.budget), '--batch-size',
               str(batch), '--input-size', str(args.input_size), '--device',
               device.type]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        memory.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f'(b) memory: {name} done', flush=True)
    by_name = {m['config']: m for m in memory}

    print('\n(a) search machinery, median of per-repeat paired ratios')
    print(markdown_table(
        ['step', 'seconds (median)', 'ratio'],
        [[f'search, budget {args.budget} (noise, ranking, gates, Adam on '
          'alpha)', f'{t_search:.3f}', f'{ratio:.3f}'],
         ['same mask fixed, no search machinery', f'{t_fixed:.3f}',
          '1.000']]))
    print('\n(b) training memory of one step')
    headers = ['configuration', 'branches', 'saved for backward (MiB)',
               'vs full', 'peak RSS of the step (MiB)', 'vs full']
    if device.type == 'cuda':
        headers += ['CUDA peak (MiB)', 'vs full']
    full = by_name['full']
    rows = []
    labels = {'budget': f'search, budget {args.budget}',
              'full': 'full supernet', 'repvgg': 'repvgg preset'}
    for name, m in by_name.items():
        row = [labels[name], m['branches'], f'{m["saved_mib"]:.0f}',
               f'{m["saved_mib"] / full["saved_mib"]:.2f}',
               f'{m["rss_step_mib"]:.0f}',
               f'{m["rss_step_mib"] / full["rss_step_mib"]:.2f}']
        if device.type == 'cuda':
            row += [f'{m["cuda_peak_mib"]:.0f}',
                    f'{m["cuda_peak_mib"] / full["cuda_peak_mib"]:.2f}']
        rows.append(row)
    print(markdown_table(headers, rows))
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(dict(device=where, batch_size=batch,
                           input_size=args.input_size, budget=args.budget,
                           step_pairs=pairs, step_ratio=ratio,
                           memory=memory), f, indent=2)


if __name__ == '__main__':
    main()
