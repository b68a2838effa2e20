"""Checkpoints that load without running their code, under torch >= 2.6.

Two halves:

- **Writing.** mmengine's Runner puts ``HistoryBuffer`` objects (numpy
  arrays inside, and bound methods pickled through the builtin ``getattr``)
  and numpy scalars into every checkpoint. :class:`SafeCheckpointHook`
  re-encodes them as plain data (tensors, lists, numbers, strings in tagged
  dicts) just before the checkpoint is saved, so it needs no pickled class
  at all and loads with ``torch.load(weights_only=True)``. ``tools/train.py``
  adds the hook to every run.
- **Reading.** :func:`load_checkpoint_safely` loads with ``weights_only=True``
  and decodes the tagged dicts back (so mmengine resumes its message hub as
  usual). It replaces mmengine's loaders for local files and for every URL
  scheme that called ``torch.load`` (``http(s)://``, ``torchvision://``,
  ``open-mmlab://``, ``mmcls://``, ``s3://``, ``pavi://``) through mmengine's
  own extension point, ``CheckpointLoader.register_scheme(force=True)``,
  when ``repnas_mm`` is imported. A file that can only be unpickled
  unsafely is refused with one line naming it and the opt-in: the config key
  ``allow_unsafe_checkpoints = True`` or the environment variable
  ``REPNAS_ALLOW_UNSAFE_CHECKPOINTS=1``; every unsafe load under the opt-in
  logs a warning.
"""
import io
import logging
import os
import os.path as osp
import pickle
from collections import OrderedDict
from tempfile import TemporaryDirectory

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer, print_log
from mmengine.registry import HOOKS
from mmengine.runner import checkpoint as mm_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

from repnas_mm.errors import UserError

ENV_VAR = 'REPNAS_ALLOW_UNSAFE_CHECKPOINTS'
CONFIG_KEY = 'allow_unsafe_checkpoints'
_TAG = '__repnas_mm__'
_allow_unsafe_from_config = False


class CheckpointError(UserError):
    """A checkpoint file that cannot be read (truncated, corrupt, foreign)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that can only be loaded by running pickled code."""


def allow_unsafe_checkpoints(allow: bool = True):
    """Opt in (or out) for this process, as the config key does."""
    global _allow_unsafe_from_config
    _allow_unsafe_from_config = bool(allow)


def unsafe_allowed() -> bool:
    env = os.environ.get(ENV_VAR, '').strip().lower()
    return _allow_unsafe_from_config or env in ('1', 'true', 'yes')


# -- plain-data encoding of training state --------------------------------
def _encode_array(array: np.ndarray):
    if array.dtype.kind in 'biuf':  # numbers: a tensor keeps them compact
        return {_TAG: 'ndarray', 'data': torch.from_numpy(array.copy())}
    return {_TAG: 'ndarray', 'list': array.tolist(), 'dtype': array.dtype.str}


def encode_plain(obj):
    """``obj`` with HistoryBuffers and numpy values as plain tagged data."""
    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        return {
            _TAG: 'HistoryBuffer',
            'max_length': int(obj.max_length),
            'log_history': _encode_array(np.asarray(log)),
            'count_history': _encode_array(np.asarray(count)),
        }
    if isinstance(obj, np.ndarray):
        return _encode_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        items = [(k, encode_plain(v)) for k, v in obj.items()]
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(
            items)
    if isinstance(obj, (list, tuple)):
        return type(obj)(encode_plain(v) for v in obj)
    return obj


def _decode_array(enc):
    if 'data' in enc:
        return enc['data'].numpy()
    return np.array(enc['list'], dtype=np.dtype(enc['dtype']))


def decode_plain(obj):
    """Inverse of :func:`encode_plain`."""
    if isinstance(obj, dict):
        kind = obj.get(_TAG)
        if kind == 'HistoryBuffer':
            return HistoryBuffer(
                _decode_array(obj['log_history']),
                _decode_array(obj['count_history']), obj['max_length'])
        if kind == 'ndarray':
            return _decode_array(obj)
        items = [(k, decode_plain(v)) for k, v in obj.items()]
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(
            items)
    if isinstance(obj, (list, tuple)):
        return type(obj)(decode_plain(v) for v in obj)
    return obj


# -- loading -----------------------------------------------------------------
def _unsafe_globals(source):
    try:
        if hasattr(source, 'seek'):
            source.seek(0)
        return torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception:  # noqa: BLE001 - only used to word the error
        return []


def load_checkpoint_safely(source, map_location=None, name=None):
    """Load a checkpoint file (path or file object) without running code.

    Raises :class:`UnsafeCheckpointError` (one line: the file, what it
    needs, the opt-in) unless unsafe loading was opted into, and
    :class:`CheckpointError` for a file torch cannot read at all.
    """
    name = name or (source if isinstance(source, (str, os.PathLike)) else
                    'checkpoint')
    try:
        checkpoint = torch.load(
            source, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError:
        needs = _unsafe_globals(source)
        needs_text = ', '.join(needs[:4]) + (', ...' if len(needs) > 4 else
                                            '') or 'pickled objects'
        if not unsafe_allowed():
            raise UnsafeCheckpointError(
                f'refusing to load {name}: unpickling it needs {needs_text}, '
                'which can run arbitrary code. If you trust this file (for '
                'example, it comes from your own run), set '
                f'`{CONFIG_KEY} = True` in the config or {ENV_VAR}=1, or '
                're-save it once with tools/convert_checkpoint.py') from None
        print_log(
            f'loading {name} UNSAFELY (it needs {needs_text}) because '
            f'{CONFIG_KEY} / {ENV_VAR} is set: this runs any code the file '
            'carries',
            logger='current',
            level=logging.WARNING)
        if hasattr(source, 'seek'):
            source.seek(0)
        checkpoint = torch.load(
            source, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - the reader fails many ways
        # A truncated zip raises RuntimeError or OSError, a foreign file
        # KeyError or EOFError: to the user they are all the same problem.
        reason = str(exc).split('\n')[0][:120] or type(exc).__name__
        raise CheckpointError(
            f'cannot read checkpoint {name}: not a complete torch checkpoint '
            f'(truncated or corrupt?): {reason}') from None
    return decode_plain(checkpoint)


# -- mmengine schemes ----------------------------------------------------------
def load_from_local(filename, map_location=None):
    """Local files (mmengine's default scheme)."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return load_checkpoint_safely(filename, map_location)


def load_from_http(filename, map_location=None, model_dir=None,
                   progress=False):
    """Download once into torch's hub cache (rank 0 first), load safely."""
    from mmengine.dist import get_dist_info
    from torch.hub import download_url_to_file, get_dir
    from urllib.parse import urlparse
    model_dir = model_dir or osp.join(get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    cached = osp.join(model_dir, osp.basename(urlparse(filename).path))
    rank, world_size = get_dist_info()
    if rank == 0 and not osp.exists(cached):
        download_url_to_file(filename, cached, progress=progress)
    if world_size > 1:
        torch.distributed.barrier()
        if not osp.exists(cached):
            download_url_to_file(filename, cached, progress=progress)
    return load_checkpoint_safely(cached, map_location, name=filename)


def load_from_torchvision(filename, map_location=None):
    name = filename.split('://', 1)[1]
    urls = mm_checkpoint.get_torchvision_models()
    return load_from_http(urls[name], map_location=map_location)


def load_from_openmmlab(filename, map_location=None):
    name = filename.split('://', 1)[1]
    name = mm_checkpoint.get_deprecated_model_names().get(name, name)
    url = mm_checkpoint.get_external_models()[name]
    if url.startswith(('http://', 'https://')):
        return load_from_http(url, map_location=map_location)
    return load_from_local(
        osp.join(mm_checkpoint._get_mmengine_home(), url), map_location)


def load_from_mmcls(filename, map_location=None):
    url = mm_checkpoint.get_mmcls_models()[filename[len('mmcls://'):]]
    checkpoint = load_from_http(url, map_location=map_location)
    return mm_checkpoint._process_mmcls_checkpoint(checkpoint)


def load_from_ceph(filename, map_location=None, backend='petrel'):
    from mmengine.fileio import get_file_backend
    file_backend = get_file_backend(
        filename, backend_args={'backend': backend})
    with io.BytesIO(file_backend.get(filename)) as buffer:
        return load_checkpoint_safely(buffer, map_location, name=filename)


def load_from_pavi(filename, map_location=None):
    from pavi import modelcloud
    model = modelcloud.get(filename[len('pavi://'):])
    with TemporaryDirectory() as tmp_dir:
        downloaded = osp.join(tmp_dir, model.name)
        model.download(downloaded)
        return load_checkpoint_safely(downloaded, map_location, name=filename)


SCHEMES = {
    '': load_from_local,
    ('http://', 'https://'): load_from_http,
    ('modelzoo://', 'torchvision://'): load_from_torchvision,
    ('open-mmlab://', 'openmmlab://'): load_from_openmmlab,
    'mmcls://': load_from_mmcls,
    (r'(\S+\:)?s3://', r'(\S+\:)?petrel://'): load_from_ceph,
    'pavi://': load_from_pavi,
}


def install_loaders():
    """Replace mmengine's unsafe loaders by ours (idempotent)."""
    for prefixes, loader in SCHEMES.items():
        prefixes = list(prefixes) if isinstance(prefixes, tuple) else prefixes
        CheckpointLoader.register_scheme(prefixes, loader, force=True)


# -- writing -------------------------------------------------------------------
@HOOKS.register_module()
class SafeCheckpointHook(Hook):
    """Write checkpoints as plain data (see the module docstring).

    Runs last among ``before_save_checkpoint`` hooks so that whatever other
    hooks add is encoded too.
    """
    priority = 'LOWEST'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in list(checkpoint):
            checkpoint[key] = encode_plain(checkpoint[key])


def architecture_in_checkpoint(filename) -> dict:
    """The searched architecture a RepNAS checkpoint carries (plain data).

    Raises ``ValueError`` naming the file when it carries none (it was not
    written by a run with ``RepNASHook``).
    """
    checkpoint = CheckpointLoader.load_checkpoint(
        str(filename), map_location='cpu', logger='current')
    arch = (checkpoint.get('repnas') or {}).get('architecture') if isinstance(
        checkpoint, dict) else None
    if arch is None:
        raise ValueError(f'{filename} carries no searched architecture (it '
                         'was not written by a RepNASHook run); pass its '
                         'searched_arch.json instead')
    return arch
