"""mmdeploy's SDK (``mmdeploy_runtime``) on an SDK folder, from Python.

:class:`Classifier` is ``mmdeploy_runtime.Classifier``. :class:`Detector`
calls the same SDK pipeline through its C API (``mmdeploy_detector_*`` in
the ``libmmdeploy.so.1`` the wheel ships) instead of the wheel's Python
``Detector``: that binding (mmdeploy-runtime 1.3.1, the last release) was
built against numpy 1, and under numpy 2 the ``labels`` array it returns
has stride 0, so every detection of an image reads the label of the last
one (boxes and scores, float arrays, are right). Measured here: labels
``[8 8 8 ...]`` under numpy 2.3 where numpy 1.26 and the ONNX model give
``[2 2 2 4 6 8 ...]``. The C API hands over plain structs, so it is right
with any numpy.
"""
import ctypes
import glob
import os.path as osp
from typing import Tuple

import numpy as np


class _Mat(ctypes.Structure):
    # mmdeploy_mat_t (mmdeploy/common.h)
    _fields_ = [('data', ctypes.POINTER(ctypes.c_uint8)),
                ('height', ctypes.c_int), ('width', ctypes.c_int),
                ('channel', ctypes.c_int), ('format', ctypes.c_int),
                ('type', ctypes.c_int), ('device', ctypes.c_void_p)]


class _Detection(ctypes.Structure):
    # mmdeploy_detection_t (mmdeploy/detector.h)
    _fields_ = [('label_id', ctypes.c_int), ('score', ctypes.c_float),
                ('bbox', ctypes.c_float * 4), ('mask', ctypes.c_void_p)]


_PIXEL_FORMAT_BGR, _DATA_TYPE_UINT8 = 0, 2


def _library() -> ctypes.CDLL:
    import mmdeploy_runtime  # loads the SDK and its ONNX Runtime net
    found = glob.glob(
        osp.join(osp.dirname(mmdeploy_runtime.__file__), 'libmmdeploy.so*'))
    if not found:
        raise ImportError('mmdeploy_runtime ships no libmmdeploy.so')
    lib = ctypes.CDLL(found[0])
    lib.mmdeploy_detector_create_by_path.argtypes = [
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
        ctypes.POINTER(ctypes.c_void_p)
    ]
    lib.mmdeploy_detector_apply.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(_Mat), ctypes.c_int,
        ctypes.POINTER(ctypes.POINTER(_Detection)),
        ctypes.POINTER(ctypes.POINTER(ctypes.c_int))
    ]
    lib.mmdeploy_detector_release_result.argtypes = [
        ctypes.POINTER(_Detection), ctypes.POINTER(ctypes.c_int), ctypes.c_int
    ]
    lib.mmdeploy_detector_release_result.restype = None
    lib.mmdeploy_detector_destroy.argtypes = [ctypes.c_void_p]
    lib.mmdeploy_detector_destroy.restype = None
    return lib


class Detector:
    """The SDK's detector: ``Detector(sdk_dir)(bgr_image)`` returns
    ``(boxes [N, 5] float32: x1, y1, x2, y2, score; labels [N] int32)``
    in the original image's pixels, as ``mmdeploy_runtime.Detector`` does.
    """

    def __init__(self, model_path: str, device_name: str = 'cpu',
                 device_id: int = 0):
        self._lib = _library()
        self._handle = ctypes.c_void_p()
        status = self._lib.mmdeploy_detector_create_by_path(
            model_path.encode(), device_name.encode(), device_id,
            ctypes.byref(self._handle))
        if status != 0:
            raise RuntimeError(f'mmdeploy SDK cannot load {model_path} '
                               f'(status {status})')

    def __call__(self, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError('expected an HxWx3 uint8 BGR image, got '
                             f'{image.dtype} {image.shape}')
        image = np.ascontiguousarray(image)
        mat = _Mat(image.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                   image.shape[0], image.shape[1], 3, _PIXEL_FORMAT_BGR,
                   _DATA_TYPE_UINT8, None)
        results = ctypes.POINTER(_Detection)()
        counts = ctypes.POINTER(ctypes.c_int)()
        status = self._lib.mmdeploy_detector_apply(
            self._handle, ctypes.byref(mat), 1, ctypes.byref(results),
            ctypes.byref(counts))
        if status != 0:
            raise RuntimeError(f'mmdeploy SDK detector failed (status '
                               f'{status})')
        try:
            n = counts[0]
            boxes = np.array([list(results[i].bbox) + [results[i].score]
                              for i in range(n)],
                             dtype=np.float32).reshape(n, 5)
            labels = np.array([results[i].label_id for i in range(n)],
                              dtype=np.int32)
        finally:
            self._lib.mmdeploy_detector_release_result(results, counts, 1)
        return boxes, labels

    def __del__(self):
        handle = getattr(self, '_handle', None)
        if handle:
            self._lib.mmdeploy_detector_destroy(handle)
            self._handle = None


def Classifier(model_path: str, device_name: str = 'cpu', device_id: int = 0):
    """``mmdeploy_runtime.Classifier`` (its results are Python tuples, so
    its binding is right under numpy 2): ``(image) -> [(label, score)]``."""
    import mmdeploy_runtime
    return mmdeploy_runtime.Classifier(
        model_path=model_path, device_name=device_name, device_id=device_id)


__all__ = ['Classifier', 'Detector']
