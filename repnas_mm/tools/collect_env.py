#!/usr/bin/env python
"""Print the versions repnas_mm runs with; ``--check`` fails on a broken stack.

Loads ``repnas_mm/env.py`` by path (found without importing the package), so
it works even when ``import repnas_mm`` itself fails (for example mmcv
without its compiled ops).
"""
import importlib.util
import sys
from pathlib import Path

if __name__ == '__main__':
    package = importlib.util.find_spec('repnas_mm')
    ENV_PY = Path(package.origin).parent / 'env.py'
    spec = importlib.util.spec_from_file_location('repnas_mm_env', ENV_PY)
    env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(env)
    sys.exit(env.main())
