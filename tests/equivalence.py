"""Helpers for equivalence tests: randomized BN statistics and a relative error."""
import torch
from torch.nn.modules.batchnorm import _BatchNorm

#: fp32 tolerance for "the fused model equals the training-time one".
FP32_TOL = 1e-5


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN random running mean/var, gamma and beta (as if trained)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=gen) * 2 - 1)
    return model


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref|: the relative error our tolerances bound."""
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def assert_close_rel(got, ref, tol=FP32_TOL):
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err = rel_error(got, ref)
    assert err <= tol, f'max relative error {err:.3g} > {tol:g}'
