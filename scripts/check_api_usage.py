#!/usr/bin/env python
"""Check that the numpy and OpenCV the environment pins still have every
attribute the 2024 OpenMMLab code uses.

numpy 2.0 removed aliases (``np.float``, ``np.NaN``, ``np.product``, ...) and
OpenCV 5 removed old names; mmcv 2.1 / mmdet 3.3 / mmpretrain 1.2 /
mmengine 0.10 predate both. This scans their sources for ``np.<name>`` and
``cv2.<name>`` and reports every name the installed module lacks, with the
files that use it. Exit 1 if any is found (``--allow`` takes exceptions).

    python scripts/check_api_usage.py
"""
import argparse
import importlib
import re
import sys
from collections import defaultdict
from pathlib import Path

PACKAGES = ('mmengine', 'mmcv', 'mmdet', 'mmpretrain', 'pycocotools')
PATTERNS = {
    'numpy': re.compile(r'\bnp\.([A-Za-z_][A-Za-z0-9_]*)'),
    'cv2': re.compile(r'\bcv2\.([A-Za-z_][A-Za-z0-9_]*)'),
}


def find_missing(packages=PACKAGES):
    """{module: {attribute: sorted list of 'file:line'}} of missing names."""
    modules = {name: importlib.import_module(name) for name in PATTERNS}
    missing = {name: defaultdict(list) for name in PATTERNS}
    for pkg in packages:
        root = Path(importlib.import_module(pkg).__file__).parent
        for path in sorted(root.rglob('*.py')):
            if '.mim' in path.parts:  # bundled configs, not code
                continue
            text = path.read_text(encoding='utf-8', errors='replace')
            for lineno, line in enumerate(text.splitlines(), 1):
                code = line.split('#', 1)[0]
                for mod_name, pattern in PATTERNS.items():
                    for attr in pattern.findall(code):
                        if not hasattr(modules[mod_name], attr):
                            rel = path.relative_to(root.parent)
                            missing[mod_name][attr].append(f'{rel}:{lineno}')
    return missing


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--allow',
        nargs='*',
        default=[],
        help='module.attr names known to be unused on our code paths')
    args = parser.parse_args(argv)
    import cv2
    import numpy
    print(f'numpy {numpy.__version__}, OpenCV {cv2.__version__}; '
          f'scanning {", ".join(PACKAGES)}')
    bad = 0
    for mod_name, attrs in find_missing().items():
        for attr, places in sorted(attrs.items()):
            tag = f'{mod_name}.{attr}'
            allowed = tag in args.allow
            bad += not allowed
            print(f'{"allowed" if allowed else "MISSING"} {tag}: '
                  f'{len(places)} use(s), e.g. {", ".join(places[:3])}')
    print('OK: every referenced name exists' if not bad else
          f'{bad} referenced name(s) missing')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
