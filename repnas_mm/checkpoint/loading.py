"""Reading a checkpoint without running its code, and the explicit opt-in.

A file that only unpickles unsafely is refused with one line naming it and
the opt-in (config key or environment variable); every unsafe load under
the opt-in logs a warning. A file torch cannot read at all is a
:class:`CheckpointError`.
"""
import logging
import os
import pickle

import torch
from mmengine.logging import print_log

from repnas_mm.errors import UserError

from .encoding import decode_plain

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
        # torch's own message, first sentence (its advice is for other cases)
        reason = str(exc).split('\n')[0].split('. ')[0][:160] or \
            type(exc).__name__
        raise CheckpointError(
            f'cannot read checkpoint {name}: not a complete torch checkpoint '
            f'(truncated or corrupt?): {reason}') from None
    return decode_plain(checkpoint)
