"""Training state as plain data: what ``torch.load(weights_only=True)`` reads.

mmengine's Runner puts ``HistoryBuffer`` objects (numpy arrays inside) and
numpy scalars into every checkpoint; they are re-encoded here as tensors,
lists, numbers and strings in tagged dicts, and decoded back on loading.
"""
from collections import OrderedDict

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

_TAG = '__repnas_mm__'


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
