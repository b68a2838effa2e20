"""Report the environment repnas_mm runs in.

``python tools/collect_env.py`` (or ``python -m repnas_mm.env`` once the
package imports) prints versions in the spirit of mmengine's
``collect_env``; ``--check`` also exits non-zero, naming what is wrong, when
a required package is missing or mmcv was installed without its compiled
ops. This module imports nothing from repnas_mm, so it can diagnose an
environment in which repnas_mm cannot import.
"""
import argparse
import importlib
import platform
import sys
from collections import OrderedDict

# (import name, shown as, required)
PACKAGES = (
    ('torch', 'PyTorch', True),
    ('torchvision', 'TorchVision', True),
    ('mmengine', 'MMEngine', True),
    ('mmcv', 'MMCV', True),
    ('mmdet', 'MMDetection', True),
    ('mmpretrain', 'MMPretrain', True),
    ('numpy', 'NumPy', True),
    ('cv2', 'OpenCV', True),
    ('pycocotools', 'pycocotools', True),
    ('onnx', 'ONNX', True),
    ('onnxruntime', 'ONNX Runtime', True),
    ('matplotlib', 'Matplotlib', True),
    ('mmdeploy', 'MMDeploy', True),
    ('mmdeploy_runtime', 'MMDeploy SDK runtime', True),
    ('mim', 'OpenMIM', False),
    ('ray', 'Ray', False),
)


# Where a distribution's name differs from what it imports as.
DISTRIBUTIONS = {'mim': 'openmim'}


def _version(module):
    version = getattr(module, '__version__', None)
    if version is None:
        from importlib.metadata import PackageNotFoundError, version as meta
        try:
            version = meta(DISTRIBUTIONS.get(module.__name__,
                                             module.__name__))
        except PackageNotFoundError:
            version = 'unknown'
    return version


def _repnas_mm_version():
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version('repnas_mm')
    except PackageNotFoundError:
        return 'not installed (run `make setup`)'


def mmcv_ops_info():
    """Whether mmcv's compiled ops load, and how they were built."""
    try:
        from mmcv.ops import get_compiler_version, get_compiling_cuda_version
    except ImportError as exc:  # mmcv-lite, or an ABI mismatch with torch
        return False, f'not available ({exc})'
    return True, (f'compiled with {get_compiler_version()}, '
                  f'CUDA ops: {get_compiling_cuda_version()}')


def collect_env():
    """Return an ordered dict of what repnas_mm depends on, and problems."""
    info = OrderedDict()
    problems = []
    info['sys.platform'] = sys.platform
    info['Python'] = sys.version.replace('\n', ' ')
    info['Machine'] = platform.machine()
    info['repnas_mm'] = _repnas_mm_version()
    for name, shown, required in PACKAGES:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - report, never crash here
            info[shown] = f'not installed ({type(exc).__name__}: {exc})'
            if required:
                problems.append(f'{shown} does not import: {exc}')
            continue
        info[shown] = _version(module)
    if 'not installed' not in info['PyTorch']:
        import torch
        info['CUDA available'] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info['GPU'] = torch.cuda.get_device_name(0)
            info['PyTorch CUDA'] = torch.version.cuda
        info['PyTorch threads'] = torch.get_num_threads()
    if 'not installed' not in info['MMCV']:
        ok, detail = mmcv_ops_info()
        info['MMCV ops'] = detail
        if not ok:
            problems.append('mmcv has no compiled ops (mmcv._ext); '
                            'run `make setup` to build them')
    if not problems:
        # Importing repnas_mm registers its modules in the OpenMMLab
        # registries.
        try:
            importlib.import_module('repnas_mm')
        except Exception as exc:  # noqa: BLE001
            problems.append(f'repnas_mm does not import: {exc}')
    return info, problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--check',
        action='store_true',
        help='exit 1 if a required package or mmcv ops are missing')
    args = parser.parse_args(argv)
    info, problems = collect_env()
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f'{key:<{width}} : {value}')
    if args.check:
        for problem in problems:
            print(f'ERROR: {problem}', file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == '__main__':
    sys.exit(main())
