"""The global random states (Python, NumPy, torch, CUDA) as plain data.

A resumed search must draw the same data augmentation as the uninterrupted
run, so RepNAS checkpoints carry these states.
"""
import random

import numpy as np
import torch


def global_rng_state() -> dict:
    state = dict(
        python=random.getstate(),
        numpy=np.random.get_state(),
        torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict):
    random.setstate(_as_tuple(state['python']))
    np.random.set_state(_as_tuple(state['numpy']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _as_tuple(obj):
    """random/np.random states are nested tuples; lists after a round trip."""
    return tuple(_as_tuple(v) if isinstance(v, list) else v for v in obj)
