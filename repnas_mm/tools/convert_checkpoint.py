#!/usr/bin/env python
"""Re-save a checkpoint so that it loads with ``weights_only=True``.

For checkpoints written by a plain mmengine run (their message hub needs
pickled ``HistoryBuffer``/numpy objects). Loading such a file runs whatever
code it carries, so this asks for ``--trust`` first: use it only on files you
made yourself or otherwise trust. The output is written atomically.

    python tools/convert_checkpoint.py epoch_12.pth epoch_12_safe.pth --trust
"""
import argparse
import os.path as osp

import torch

import repnas_mm  # noqa: F401
from repnas_mm.atomic import atomic_path
from repnas_mm.checkpoint import (CheckpointError, UnsafeCheckpointError,
                                  allow_unsafe_checkpoints, encode_plain,
                                  load_checkpoint_safely)
from repnas_mm.runner import run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src')
    parser.add_argument('dst')
    parser.add_argument(
        '--trust',
        action='store_true',
        help='I trust SRC: allow unpickling it (runs code it carries)')
    args = parser.parse_args(argv)
    if not osp.isfile(args.src):
        raise CheckpointError(f'checkpoint not found: {args.src}')
    allow_unsafe_checkpoints(args.trust)
    try:
        checkpoint = load_checkpoint_safely(args.src, map_location='cpu')
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f'{exc} (here: pass --trust)') from None
    with atomic_path(args.dst) as tmp:
        torch.save(encode_plain(checkpoint), tmp)
        torch.load(tmp, weights_only=True)  # what we promise
    print(f'wrote {args.dst}: loads with weights_only=True')
    return 0


if __name__ == '__main__':
    run_tool(main)
