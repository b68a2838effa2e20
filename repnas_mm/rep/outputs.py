"""The tensors of a model's output, whatever nesting it returns, and the
check every in-place conversion makes: the outputs did not move."""
from typing import List, Optional

import torch
import torch.nn as nn
from torch import Tensor


def output_tensors(outputs, strict: bool = True) -> List[Tensor]:
    """Tensors of a nested tuple/list/dict output, in a fixed order.

    Dict values come in key order. Anything else that is not a tensor is a
    ``TypeError`` with ``strict=True`` and skipped otherwise.
    """
    if isinstance(outputs, Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for k in sorted(outputs)
                for t in output_tensors(outputs[k], strict)]
    if isinstance(outputs, (list, tuple)):
        return [t for o in outputs for t in output_tensors(o, strict)]
    if strict:
        raise TypeError(f'a model output of type {type(outputs).__name__} '
                        'holds no tensors to compare')
    return []


def probe_input(model: nn.Module,
                example: Optional[Tensor] = None) -> Tensor:
    """A seeded random input shaped like ``example`` (default 1xCx64x64,
    C the first conv's input channels, else 3), on its device and dtype."""
    if example is None:
        first = next((m for m in model.modules()
                      if isinstance(m, nn.Conv2d)), None)
        channels = first.in_channels if first is not None else 3
        example = torch.zeros(1, channels, 64, 64)
    return torch.randn(example.shape,
                       generator=torch.Generator().manual_seed(0)).to(example)


def run_eval(model: nn.Module, x: Tensor):
    """``model(x)`` in eval mode without autograd; the mode is restored."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was_training)


def eval_outputs(model: nn.Module, x: Tensor) -> List[Tensor]:
    """The output tensors of :func:`run_eval`."""
    return output_tensors(run_eval(model, x), strict=False)


def outputs_match(after: List[Tensor], before: List[Tensor], rtol: float,
                  atol: float) -> bool:
    """Whether two output lists agree tensor for tensor."""
    return len(after) == len(before) and all(
        torch.allclose(a, b, rtol=rtol, atol=atol)
        for a, b in zip(after, before))
