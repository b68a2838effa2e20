"""A deployment is written whole or not at all: a staging folder, and the
atomic writes of its checkpoint and config."""
import contextlib
import os
import os.path as osp
import shutil
import tempfile
from typing import Sequence

import torch

from repnas_mm.atomic import atomic_path


def save_checkpoint(state_dict, meta, path):
    with atomic_path(path) as tmp:
        torch.save({'meta': meta, 'state_dict': state_dict}, tmp)


def dump_config(cfg, path):
    with atomic_path(path, suffix='.py') as tmp:
        cfg.dump(tmp)


@contextlib.contextmanager
def staged(work_dir: str, outputs: Sequence[str] = ()):
    """A temporary folder in ``work_dir`` whose files move into
    ``work_dir`` only when the block succeeds (else it is removed, and so
    is ``work_dir`` if this created it): a deployment is written whole or
    not at all. ``outputs``: names a deployment may write; those this one
    did not write are removed from ``work_dir`` (an earlier run's INT8 or
    SDK files do not stay beside a new fused model)."""
    created = not osp.isdir(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    stage = osp.abspath(tempfile.mkdtemp(prefix='.deploy-', dir=work_dir))
    try:
        yield stage
        written = os.listdir(stage)
        for entry in set(outputs) - set(written):
            stale = osp.join(work_dir, entry)
            if osp.isdir(stale) and not osp.islink(stale):
                shutil.rmtree(stale)
            elif osp.lexists(stale):
                os.remove(stale)
        for entry in sorted(written):
            target = osp.join(work_dir, entry)
            if osp.isdir(target) and not osp.islink(target):
                shutil.rmtree(target)  # a folder of an earlier run
            os.replace(osp.join(stage, entry), target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            shutil.rmtree(work_dir, ignore_errors=True)
        raise
    shutil.rmtree(stage, ignore_errors=True)


def moved(value, stage: str, work_dir: str):
    """``value`` with paths inside ``stage`` pointing into ``work_dir``."""
    if isinstance(value, dict):
        return {k: moved(v, stage, work_dir) for k, v in value.items()}
    if value == stage:
        return work_dir
    if isinstance(value, str) and value.startswith(stage + os.sep):
        return osp.join(work_dir, osp.relpath(value, stage))
    return value
