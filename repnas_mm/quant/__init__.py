"""Quantization-aware training in OpenMMLab: the config key ``quantize``,
the runner that applies it when it builds the model, and the hook that
calibrates the activation ranges before training.

The mechanism (placement, fake quantization on the equivalent kernel) is
:mod:`repnas_mm.rep.quant`, pure PyTorch; this package only wires it.
"""
from .model import QUANTIZE_KEY, prepare_from_config, probe_runner
from .runner import QATHook, QuantAwareRunner

__all__ = ['QATHook', 'QUANTIZE_KEY', 'QuantAwareRunner',
           'prepare_from_config', 'probe_runner']
