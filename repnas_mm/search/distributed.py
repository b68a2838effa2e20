"""What the search policies need from distributed training.

Alpha and DyRep's saliency scores live outside the DDP-wrapped model, so
they are averaged over ranks here (mmengine's ``all_reduce``, a no-op on one
process); and pruned or inactive branches get no gradient, which DDP must be
told to tolerate.
"""
import torch
from mmengine.dist import all_reduce
from mmengine.model import is_model_wrapper


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP (or other mmengine) wrapper, or ``model``."""
    return model.module if is_model_wrapper(model) else model


def average_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """All-reduce-mean ``tensor`` in place (no-op on one process)."""
    all_reduce(tensor, op='mean')
    return tensor


def require_unused_parameters(runner, hook: str, why: str):
    """DDP must tolerate parameters without gradient (skipped branches)."""
    ddp = runner.model
    if isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and \
            not ddp.find_unused_parameters:
        raise RuntimeError(
            f'{hook}: {why}; set model_wrapper_cfg=dict(type='
            "'MMDistributedDataParallel', find_unused_parameters=True)")
