#!/usr/bin/env python
"""Training-step time of a DyRep model against DBB-everywhere and plain.

Three versions of a DyRep config's classifier, timed side by side (paired,
round-robin, medians): the structure a DyRep run reached (from its
checkpoint), every block grown to the config's ``grow_to`` branches
(DBB-everywhere), and the plain stock network. One step = forward, loss,
backward, SGD step. CUDA when present, else the CPU.

    python tools/benchmark_dyrep.py configs/dyrep_resnet18_cifar10.py \
        --checkpoint work_dirs/dyrep_c10/epoch_6.pth
"""
import argparse
import statistics

import torch
import torch.nn as nn
from mmengine.config import DictAction

import repnas_mm  # noqa: F401
from repnas_mm.benchmark import (cuda_peak_mib, describe_device,
                                 markdown_table, time_round_robin)
from repnas_mm.checkpoint import kept_branches
from repnas_mm.deploy import DeployError
from repnas_mm.deploy.model import build_model_unchecked
from repnas_mm.config import read_config
from repnas_mm.runner import run_tool
from repnas_mm.rep import ODBB


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config')
    parser.add_argument('--checkpoint', required=True,
                        help='a DyRep run checkpoint (its structure is used)')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--input-size', type=int, default=32)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--device')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def models_to_time(cfg, checkpoint):
    from mmengine.runner.checkpoint import CheckpointLoader
    structure = kept_branches(
        CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu'))
    if structure is None:
        raise DeployError(f'{checkpoint} carries no DyRep structure')
    hook = next(h for h in cfg.custom_hooks if h['type'] == 'DyRepHook')
    grow_to = hook.get('grow_to', 'dbb')

    dyrep = build_model_unchecked(cfg)
    named = dict(dyrep.named_modules())
    for name, branches in structure.items():
        named[name].active = branches
    everywhere = build_model_unchecked(cfg)
    from repnas_mm.rep.presets import resolve_branches
    for block in everywhere.modules():
        if isinstance(block, ODBB):
            block.active = [
                n for n in resolve_branches(grow_to, block.in_channels,
                                            block.out_channels, block.stride)
                if n in block.branch_names
            ]
    plain_cfg = cfg.copy()
    backbone = plain_cfg.model.backbone
    if backbone.get('type') == 'ODBBConverted':
        plain_cfg.model.backbone = dict(backbone['backbone'], init_cfg=None)
    else:  # ODBBNet: its main branch alone
        plain_cfg.model.backbone.branches = 'plain'
    plain = build_model_unchecked(plain_cfg)
    branches = {
        'DyRep (its final structure)': sum(len(b) for b in structure.values()),
        f'DBB-everywhere ({grow_to})': sum(
            len(b.active) for b in everywhere.modules()
            if isinstance(b, ODBB)),
        'plain': len(structure),
    }
    return dict(zip(branches, (dyrep, everywhere, plain))), branches


def main(argv=None):
    args = parse_args(argv)
    cfg = read_config(args.config, args.cfg_options)
    models, branches = models_to_time(cfg, args.checkpoint)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size,
                    device=device)
    y = torch.randint(0, 10, (args.batch_size, ), device=device)
    runs = {}
    for name, model in models.items():
        model.to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, optimizer=optimizer):
            logits = model(x, mode='tensor')
            nn.functional.cross_entropy(logits, y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        runs[name] = step
    where = describe_device(device)
    print(f'{where}; batch {args.batch_size}, '
          f'{args.input_size}x{args.input_size}, fp32; one training step')
    timings = time_round_robin(runs, args.batch_size, device, args.repeats,
                               iters=1, warmup=2, inference=False)
    cuda = torch.device(device).type == 'cuda'
    plain = timings['plain']
    rows = []
    for name, t in timings.items():
        ratio = statistics.median(
            a / b for a, b in zip(t.seconds, plain.seconds))
        rows.append([name, branches[name], f'{1e3 * t.median:.0f}',
                     f'{ratio:.2f}x'])
        if cuda:  # one more step, its peak memory
            rows[-1].append(
                f'{cuda_peak_mib(runs[name], device, inference=False):.0f}')
    print(markdown_table(
        ['model', 'branches', 'ms / step (median)',
         'vs plain (paired median)'] + (['CUDA peak MiB'] if cuda else []),
        rows))
    return 0


if __name__ == '__main__':
    run_tool(main)
