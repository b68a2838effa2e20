"""Reading a config file: the one way every tool and library call does it."""
import os.path as osp
from typing import Optional

from repnas_mm.errors import UserError


def read_config(path: str, cfg_options: Optional[dict] = None):
    """The mmengine ``Config`` at ``path`` with ``--cfg-options`` merged.

    A missing file is a :class:`~repnas_mm.errors.UserError` (one line).
    """
    from mmengine.config import Config
    if not osp.isfile(path):
        raise UserError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


#: Config builders that convert a stock backbone (``backbone=``) in place.
CONVERTING_BUILDERS = ('ODBBConverted', 'RefConvConverted')


def unwrap_converted(node, types=CONVERTING_BUILDERS, **overrides) -> None:
    """Replace, in place, every dict of ``node`` (a config tree) whose
    ``type`` is one of ``types`` by its ``backbone`` updated with
    ``overrides``: the stock backbone that the builder converts."""
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for key, value in list(items):
        while isinstance(value, dict) and value.get('type') in types:
            value = node[key] = dict(value['backbone'], **overrides)
        unwrap_converted(value, types, **overrides)
