"""The tensors of a model's output, whatever nesting it returns, and the
check every in-place conversion makes: the outputs did not move, with
BatchNorms that are not identities."""
import contextlib
from typing import List, Optional

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm


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


def relative_error(got: List[Tensor], ref: List[Tensor]) -> float:
    """max over outputs of ``max|got - ref| / max|ref|``; ``inf`` if the
    outputs differ in number or shape."""
    if len(got) != len(ref) or any(g.shape != r.shape
                                   for g, r in zip(got, ref)):
        return float('inf')
    worst = 0.0
    for g, r in zip(got, ref):
        if r.numel():
            g, r = g.double(), r.double()
            err = (g - r).abs().max() / r.abs().max().clamp_min(1e-12)
            worst = max(worst, float(err))
    return worst


#: Relative error within which two float outputs count as the same function.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


def tolerance(dtype: torch.dtype) -> float:
    """:data:`TOLERANCE` for ``dtype`` (16-bit floats: 1e-2)."""
    return TOLERANCE.get(dtype, 1e-2)


def _norm_tensors(bn: _BatchNorm) -> List[Tensor]:
    return [t for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias)
            if t is not None]


def set_trained_like_norms(model: nn.Module, x: Tensor, seed: int = 0):
    """Give every BatchNorm of ``model`` statistics and affine parameters
    as a trained model's might have.

    A fresh BN (mean 0, variance 1, weight 1, bias 0) is an identity up to
    ``eps``, so a check that moves BNs around cannot see one applied in the
    wrong place or not at all. Here each BN, in the order the model runs
    them on ``x`` (eval mode), takes a running mean and variance of the
    scale of its actual input (the mean a random fraction of the input's,
    at most half, the variance a random multiple of its second moment,
    floored per layer: so activations keep their scale at any depth and no
    channel amplifies rounding noise) and random affine parameters; BNs
    that do not run get random statistics too. Seeded: the same model and
    ``x`` get the same values.
    """
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    done = set()

    def uniform(n, low, high, like):
        return (torch.rand(n, generator=gen) * (high - low) + low).to(like)

    def perturb(bn, inputs=None):
        if bn in done:
            return
        done.add(bn)
        n = bn.num_features
        with torch.no_grad():
            if bn.running_mean is not None:
                mean = torch.zeros_like(bn.running_mean)
                var = torch.ones_like(bn.running_var)
                if inputs and isinstance(inputs[0], Tensor) and \
                        inputs[0].dim() > 1 and inputs[0].shape[1] == n:
                    dims = [d for d in range(inputs[0].dim()) if d != 1]
                    var, mean = torch.var_mean(inputs[0].detach().to(mean),
                                               dim=dims, unbiased=False)
                    # The second moment, plus its mean over the channels
                    # (a floor), and at most half the mean: a channel of
                    # nearly constant or nearly zero values (a pooled map,
                    # a batch of one) must not turn rounding noise into
                    # signal.
                    var = var + mean.square()
                    var = var + var.mean() + bn.eps
                bn.running_mean.copy_(mean * uniform(n, -0.5, 0.5, mean))
                bn.running_var.copy_(var * uniform(n, 0.5, 2.0, var))
            if bn.weight is not None:
                bn.weight.copy_(uniform(n, 0.5, 1.5, bn.weight))
            if bn.bias is not None:
                bn.bias.copy_(uniform(n, -0.5, 0.5, bn.bias))

    handles = [m.register_forward_pre_hook(perturb) for m in norms]
    try:
        run_eval(model, x)
    finally:
        for handle in handles:
            handle.remove()
    for bn in norms:
        perturb(bn)  # those that did not run
    return model


@contextlib.contextmanager
def trained_like_norms(model: nn.Module, x: Tensor, seed: int = 0):
    """:func:`set_trained_like_norms` within the block; every BN's own
    statistics and affine parameters come back on exit."""
    saved = [(m, [t.detach().clone() for t in _norm_tensors(m)])
             for m in model.modules() if isinstance(m, _BatchNorm)]
    try:
        yield set_trained_like_norms(model, x, seed)
    finally:
        with torch.no_grad():
            for bn, tensors in saved:
                for t, value in zip(_norm_tensors(bn), tensors):
                    t.copy_(value)
