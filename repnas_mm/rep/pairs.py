"""Which BatchNorm normalizes which conv, found by running the model.

A conv and a BN form a *pair*, one block for :func:`~.convert.convert_to_odbb`,
when moving the BN into the conv's place changes nothing else: the BN is the
only reader of the conv's output, and each of the two runs once. Names and
module layout say nothing reliable about that (a deep stem's last conv is
normalized by a BN one level up; DPN's pre-activation units keep the BN of
the next unit beside the conv of the previous one; Res2Net keeps its convs
and BNs in two lists), so the pairs are read off one forward pass: every
torch function that reads a conv's output is recorded, with the BN whose
forward was running at that moment, if any. Pure PyTorch.
"""
from typing import Dict, List, Tuple

import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .outputs import run_eval

#: A reader that is no BatchNorm: another op, or the model's own output.
ELSEWHERE = ''


class _ReadRecorder(TorchFunctionMode):
    """Records, for every conv output, who reads its values.

    A read is a torch function that takes the tensor and returns a tensor
    (shape and dtype queries return none and are not reads). The reader is
    the innermost BatchNorm whose forward is running, or :data:`ELSEWHERE`.
    """

    def __init__(self):
        super().__init__()
        self.produced: Dict[int, Tuple[str, Tensor]] = {}
        self.running_bns: List[str] = []
        self.readers: Dict[str, List[str]] = {}

    def record(self, tensor, reader: str):
        # The produced tensors stay referenced until the end of the trace:
        # an id() is unique only among live objects.
        hit = self.produced.get(id(tensor))
        if hit is not None and hit[1] is tensor:
            self.readers.setdefault(hit[0], []).append(reader)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, Tensor) for t in tree_leaves(out)):
            reader = self.running_bns[-1] if self.running_bns else ELSEWHERE
            for arg in tree_leaves((args, kwargs)):
                if isinstance(arg, Tensor):
                    self.record(arg, reader)
        return out


def trace_conv_bn_pairs(
        model: nn.Module,
        example: Tensor) -> Tuple[List[Tuple[str, str]], Dict[str, str]]:
    """``(pairs, refused)`` from running ``example`` through ``model``.

    ``pairs``: ``(conv name, BN name)`` for every conv whose output only one
    BN reads, each of them run once. ``refused``: conv name -> why a conv
    that some BN reads is no pair. A conv no BN reads is in neither.
    """
    recorder = _ReadRecorder()
    calls: Dict[str, int] = {}

    def count(name):
        calls[name] = calls.get(name, 0) + 1

    def conv_ran(name, output):
        count(name)
        recorder.produced[id(output)] = (name, output)

    def bn_starts(name):
        count(name)
        recorder.running_bns.append(name)

    def bn_ends():  # a hook's return value would replace the output
        recorder.running_bns.pop()

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: conv_ran(name, o)))
        elif isinstance(module, _BatchNorm):
            handles.append(module.register_forward_pre_hook(
                lambda m, i, name=name: bn_starts(name)))
            handles.append(module.register_forward_hook(
                lambda m, i, o: bn_ends()))
    try:
        with recorder:
            outputs = run_eval(model, example)
    finally:
        for handle in handles:
            handle.remove()
    for tensor in tree_leaves(outputs):  # returned as it is: read outside
        recorder.record(tensor, ELSEWHERE)

    pairs, refused = [], {}
    for conv, readers in recorder.readers.items():
        bns = list(dict.fromkeys(r for r in readers if r != ELSEWHERE))
        if not bns:
            continue
        if len(bns) > 1:
            refused[conv] = f'read by {len(bns)} BatchNorms ({", ".join(bns)})'
        elif ELSEWHERE in readers:
            refused[conv] = f'its output is read by more than {bns[0]}'
        elif calls[conv] > 1 or calls[bns[0]] > 1:
            twice = conv if calls[conv] > 1 else bns[0]
            refused[conv] = f'{twice} runs {calls[twice]} times per forward'
        else:
            pairs.append((conv, bns[0]))
    return pairs, refused


def find_conv_bn_pairs(model: nn.Module,
                       example: Tensor) -> List[Tuple[str, str]]:
    """The ``(conv name, BN name)`` pairs of :func:`trace_conv_bn_pairs`."""
    return trace_conv_bn_pairs(model, example)[0]


__all__ = ['find_conv_bn_pairs', 'trace_conv_bn_pairs']
