"""Checkpoints that load without running their code, under torch >= 2.6.

``encoding`` (plain data), ``loading`` (safe reads, the opt-in, the
errors), ``schemes`` (mmengine's URL schemes), ``hook`` (writing),
``architecture`` (the branches a run kept, read from its checkpoint).

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
from .encoding import decode_plain, encode_plain
from .hook import SafeCheckpointHook
from .loading import (CONFIG_KEY, ENV_VAR, CheckpointError,
                      UnsafeCheckpointError, allow_unsafe_checkpoints,
                      load_checkpoint_safely, unsafe_allowed)
from .architecture import (architecture_in_checkpoint, kept_branches,
                           recorded_architecture)
from .schemes import install_loaders

__all__ = [
    'CONFIG_KEY', 'ENV_VAR', 'CheckpointError', 'SafeCheckpointHook',
    'UnsafeCheckpointError', 'allow_unsafe_checkpoints',
    'architecture_in_checkpoint', 'decode_plain', 'encode_plain',
    'install_loaders', 'kept_branches', 'load_checkpoint_safely',
    'recorded_architecture', 'unsafe_allowed'
]
