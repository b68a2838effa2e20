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
