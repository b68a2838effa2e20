"""Files the package ships besides its code (layer 0, stdlib only).

Configs, tools and the CIFAR-10 subset live under ``repnas_mm/.mim/``, the
folder OpenMMLab's ``mim`` and mmengine's ``repnas_mm::`` config scope read
(as in mmpretrain and mmdet). In a checkout its entries are links to the
repository's ``configs/`` and ``datasets/`` and to ``repnas_mm/tools/``; a
wheel holds copies.
The library reads them only through these functions, never through a path
relative to the repository.
"""
import os.path as osp

PACKAGE_DIR = osp.dirname(osp.abspath(__file__))
MIM_DIR = osp.join(PACKAGE_DIR, '.mim')


def _shipped(kind: str, name: str) -> str:
    path = osp.join(MIM_DIR, kind, name)
    if not osp.exists(path):
        raise FileNotFoundError(
            f'{name} is not among the {kind} repnas_mm ships '
            f'({osp.join(MIM_DIR, kind)})')
    return osp.realpath(path)


def config_path(name: str) -> str:
    """A shipped config, e.g. ``config_path('deploy/detection_onnxruntime_
    static.py')`` (the path the file really has: the repository's
    ``configs/`` in a checkout)."""
    return _shipped('configs', name)


def dataset_path(name: str) -> str:
    """A shipped data archive (``datasets/`` of the repository)."""
    return _shipped('datasets', name)


__all__ = ['MIM_DIR', 'PACKAGE_DIR', 'config_path', 'dataset_path']
