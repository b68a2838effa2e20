"""The tensors of a model's output, whatever nesting it returns."""
from typing import List

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
