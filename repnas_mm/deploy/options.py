"""What a deployment does, as small option objects (``deploy(verify=...,
export=..., int8=...)``); ``tools/deploy.py`` maps its argument groups onto
them, and their defaults are the tool's."""
from dataclasses import dataclass
from typing import Optional, Sequence

from .model import DeployError

CALIBRATION_METHODS = ('minmax', 'entropy', 'percentile')


@dataclass(frozen=True)
class VerifyOptions:
    """The check of the fused model against the training-time one.

    Args:
        images: image files or folders to verify on (default: the config's
            test data set).
        num_images: how many images.
        tolerance: the largest relative error allowed (fused, and the
            RepVGG copy, vs training-time).
    """
    images: Optional[Sequence[str]] = None
    num_images: int = 8
    tolerance: float = 1e-4


@dataclass(frozen=True)
class ExportOptions:
    """The mmdeploy export (ONNX Runtime), checked in its backend and SDK.

    Args:
        deploy_cfg: mmdeploy deploy config (default: ``configs/deploy/``'s
            dynamic-shape ONNX Runtime config for the config's task).
        tolerance: the largest gap of the backend and SDK to PyTorch.
    """
    deploy_cfg: Optional[str] = None
    tolerance: float = 1e-3


@dataclass(frozen=True)
class Int8Options:
    """ONNX Runtime INT8 quantization of the export, evaluated.

    Args:
        tolerance: the most points of the config's metric INT8 may lose.
        calib_images: training images to calibrate on.
        calib_method: one of :data:`CALIBRATION_METHODS`.
        fp32_layers: after a sensitivity pass (each quantized layer alone
            quantized, the error of the model's outputs measured), keep
            this many of the most sensitive layers in fp32.
    """
    tolerance: float = 1.0
    calib_images: int = 256
    calib_method: str = 'minmax'
    fp32_layers: int = 0

    def __post_init__(self):
        if self.calib_method not in CALIBRATION_METHODS:
            raise DeployError(
                f'unknown calibration method {self.calib_method!r}; methods '
                f'are {", ".join(CALIBRATION_METHODS)}')
        if self.calib_images < 1:
            raise DeployError(f'calib_images must be at least 1, got '
                              f'{self.calib_images}')
        if self.fp32_layers < 0:
            raise DeployError(f'fp32_layers must be at least 0, got '
                              f'{self.fp32_layers}')


def as_options(value, cls):
    """``value`` as ``cls`` options: None or False stays None, True is the
    defaults, an instance is itself."""
    if value is None or value is False:
        return None
    if value is True:
        return cls()
    if not isinstance(value, cls):
        raise TypeError(f'expected {cls.__name__}, True or None, got '
                        f'{type(value).__name__}')
    return value
