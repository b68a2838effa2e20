"""Fuse any module tree: one verb for blocks, backbones, classifiers and
detectors, and a check of what it returns."""
import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn as nn
from torch import Tensor

from .outputs import eval_outputs, output_tensors, relative_error, tolerance
from .refocus import restore_refconvs
from .stock import restore_conv_bn


class FusionError(ValueError):
    """The fused model does not compute what the unfused one did."""


def reparameterize_model(model: nn.Module,
                         inplace: bool = False,
                         example: Optional[Tensor] = None,
                         rtol: Optional[float] = None) -> nn.Module:
    """Call ``switch_to_deploy()`` on every module of ``model`` that has it.

    Works for ODBBs and for any other re-parameterizable module with that
    verb (mmpretrain's RepVGG blocks, for example). ODBBs that
    ``convert_to_odbb`` put in place of a Conv+BN pair become a plain
    ``Conv2d`` + BN pair again (the stock layout), and RefConvs
    (``convert_to_refconv``) plain ``Conv2d`` of their kernel ``W_t``.
    Returns the fused model; with ``inplace=False`` (default) ``model``
    itself is left untouched.
    Fusing a fused model changes nothing.

    With ``example`` (an input batch), the fused model is checked against
    the unfused one on it, in eval mode: a relative error
    (``max|fused - unfused| / max|unfused|``, worst output) above ``rtol``
    (default 1e-4 in float32, 1e-9 in float64) raises :class:`FusionError`
    naming the first module, in execution order, whose output differs
    (with ``inplace=True``, ``model`` is fused all the same).
    """
    check = example is not None
    if check:
        # In place, the unfused model is gone after fusing: record each
        # module's output now. Otherwise it is recorded only on a failure.
        reference, per_module = (
            record_module_outputs(model, example) if inplace else
            (eval_outputs(model, example), None))
    fused = fuse_in_place(model if inplace else copy.deepcopy(model))
    if check:
        limit = tolerance(example.dtype) if rtol is None else rtol
        try:
            error = relative_error(eval_outputs(fused, example), reference)
        except Exception as exc:
            raise FusionError('the fused model fails on the example: '
                              f'{type(exc).__name__}: {exc}') from exc
        if error > limit:
            if per_module is None:
                per_module = record_module_outputs(model, example)[1]
            raise FusionError(
                f'fusion changed the model\'s outputs: relative error '
                f'{error:.2e} > {limit:g}; '
                f'{_first_difference(per_module, fused, example, limit)}')
    return fused


def fuse_in_place(model: nn.Module) -> nn.Module:
    """:func:`reparameterize_model`'s fusion, in place, unchecked."""
    # RefConvs first: a fused block reads its conv's weight, which must be
    # the refocused kernel, not a RefConv's frozen base.
    restore_refconvs(model)
    # Collect first: switching replaces children while we walk.
    targets = [m for m in model.modules()
               if callable(getattr(m, 'switch_to_deploy', None))]
    for module in targets:
        module.switch_to_deploy()
    # ODBBs that replaced a model's own Conv+BN become that pair again.
    restore_conv_bn(model)
    return model


ModuleOutputs = List[Tuple[str, type, List[Tensor]]]


def record_module_outputs(
        model: nn.Module,
        x: Tensor,
        names: Optional[Sequence[str]] = None
) -> Tuple[List[Tensor], ModuleOutputs]:
    """The model's outputs on ``x`` (eval mode) and those of its named
    modules (``names``, default all), each call in the order the modules
    finish; copies, since a later in-place op must not change them. A
    module that the model calls through ``.forward`` runs no hooks and is
    missing."""
    per_module: ModuleOutputs = []

    def keep(name, module, output):  # None: a hook's value replaces output
        per_module.append((name, type(module), [
            t.detach().clone() for t in output_tensors(output, strict=False)
        ]))

    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(
            lambda m, i, o, name=name: keep(name, m, o))
        for name in (names if names is not None else modules) if name
    ]
    try:
        outputs = eval_outputs(model, x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, per_module


def _first_difference(reference: ModuleOutputs, fused: nn.Module,
                      x: Tensor, limit: float) -> str:
    """Which module's output differs first: among the modules that both
    models have under the same name and type, in execution order."""
    try:
        got = record_module_outputs(fused, x)[1]
    except Exception:  # the fused model's own failure is reported above
        return 'the fused model fails on the example'
    seen: Dict[Tuple[str, type], int] = {}
    fused_outputs: Dict[Tuple[str, type, int], List[Tensor]] = {}
    for name, kind, tensors in got:
        call = seen[(name, kind)] = seen.get((name, kind), -1) + 1
        fused_outputs[(name, kind, call)] = tensors
    seen.clear()
    for name, kind, tensors in reference:
        call = seen[(name, kind)] = seen.get((name, kind), -1) + 1
        other = fused_outputs.get((name, kind, call))
        if other is None:
            continue
        error = relative_error(other, tensors)
        if error > limit:
            return (f'first differing module: {name} ({kind.__name__}, '
                    f'relative error {error:.2e})')
    return 'no single module\'s output differs beyond the tolerance'
