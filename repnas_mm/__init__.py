"""repnas_mm: RepNAS search, training, fusion and deployment of structurally
re-parameterized CNNs, for OpenMMLab.

``repnas_mm.rep`` needs only torch. When the OpenMMLab stack is installed,
importing ``repnas_mm`` also registers its modules in the mmpretrain and mmdet
registries, so configs need only
``custom_imports=dict(imports=['repnas_mm'])``, replaces mmengine's
checkpoint loaders by safe ones (``repnas_mm.checkpoint``), and lets configs
inherit the shipped ones as ``repnas_mm::<path>`` (``repnas_mm.config``).
"""
from importlib.util import find_spec

from .version import __version__

__all__ = ['__version__']

if find_spec('mmengine') is not None:
    try:
        from . import models  # noqa: F401  (registers modules)
        from .search import bn_hook, dyrep_hook, optim, repnas_hook  # noqa: F401
        from . import quant  # noqa: F401  (QuantAwareRunner, QATHook)
        from .checkpoint import install_loaders
        from .config import register_package_scope
        install_loaders()  # checkpoints load without running their code
        register_package_scope()  # configs inherit 'repnas_mm::...'
    except ImportError as exc:
        raise ImportError(
            f'repnas_mm could not register its OpenMMLab modules: {exc}. '
            'Run `python tools/collect_env.py --check` to see what is '
            'missing, or `make setup`.') from exc
