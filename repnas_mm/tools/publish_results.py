#!/usr/bin/env python
"""Copy a study's evidence from its work dir into docs/results/, portable.

    python tools/publish_results.py WORK_DIR OUT_DIR [--alias ABS=REL ...]

Keeps what a reader needs to check and re-run the study: its tables
(results.{json,md,png}, int8.{json,md}, summary.json) and, per run,
result.json, its training log and the architecture it drew or found. Not
the checkpoints, and not a config copy per run: results.json records the
command and what each method changes in the study's config. Every path of
this machine is made relative to the repository root (the working
directory); --alias ABS=REL maps a folder outside it (a data root) to the
relative path a clone uses. It stops, writing nothing more, if a machine
path would be left.
"""
import argparse
import os.path as osp

from repnas_mm.errors import UserError
from repnas_mm.evidence import publish
from repnas_mm.runner import run_tool


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('work_dir')
    parser.add_argument('out_dir')
    parser.add_argument('--alias', nargs='+', default=[], metavar='ABS=REL',
                        help='a folder outside the repository and the '
                        'relative path that replaces it')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    aliases = []
    for item in args.alias:
        absolute, sep, relative = item.partition('=')
        if not sep or not osp.isabs(absolute) or osp.isabs(relative):
            raise UserError(f'--alias {item}: use ABSOLUTE=RELATIVE')
        aliases.append((absolute, relative))
    if not osp.isdir(args.work_dir):
        raise UserError(f'{args.work_dir} is not a folder')
    try:
        written = publish(args.work_dir, args.out_dir, aliases=aliases)
    except ValueError as exc:
        raise UserError(f'{exc}; map its folder with --alias ABS=RELATIVE '
                        '(nothing was written)') from None
    print(f'[publish] {len(written)} files in {args.out_dir}')
    return 0


if __name__ == '__main__':
    run_tool(main)
