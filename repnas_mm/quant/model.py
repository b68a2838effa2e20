"""A config's model made quantization-aware (its ``quantize`` key).

``quantize = dict(probe_size=64)`` in a config: every tool that builds the
model (``tools/train.py`` through :class:`~.runner.QuantAwareRunner`,
``tools/deploy.py``, ``tools/test.py``) builds it quantization-aware. The
module tree and the weights' names stay those of the fp32 model, so
``load_from`` a trained fp32 checkpoint loads it (only the quantizers are
new), and mmdeploy, which builds the fp32 model from the same config,
loads a QAT checkpoint as an fp32 one.
"""
import torch
from mmengine.model import BaseModel

from repnas_mm.rep.quant import prepare_qat

#: The config key.
QUANTIZE_KEY = 'quantize'
#: The options ``quantize`` takes, with their defaults.
DEFAULTS = dict(probe_size=64, in_channels=3)


def probe_runner(size: int, in_channels: int = 3):
    """``run(model)`` for :func:`~repnas_mm.rep.quant.prepare_qat`: one
    forward pass of zeros (an OpenMMLab model in ``mode='tensor'``)."""

    def run(model):
        param = next(model.parameters())
        x = torch.zeros(1, in_channels, size, size, device=param.device,
                        dtype=param.dtype)
        if isinstance(model, BaseModel):
            return model(x, mode='tensor')
        return model(x)

    return run


def options(cfg) -> dict:
    """The config's ``quantize`` options (defaults filled), or {} when it
    has none. Unknown options are an error."""
    spec = cfg.get(QUANTIZE_KEY, None)
    if not spec:
        return {}
    spec = dict(spec)
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise ValueError(f'unknown {QUANTIZE_KEY} option(s) {unknown}; the '
                         f'options are {sorted(DEFAULTS)}')
    return {**DEFAULTS, **spec}


def prepare_from_config(model, cfg):
    """``model`` made quantization-aware in place if ``cfg`` says so (its
    ``quantize`` key); returned."""
    spec = options(cfg)
    if spec:
        prepare_qat(model, probe_runner(spec['probe_size'],
                                        spec['in_channels']))
    return model
