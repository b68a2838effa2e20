"""DyRep: dynamic re-parameterization as a policy over a model's ODBBs.

Starting from the main ``kxk`` branch alone, every step

1. de-parameterizes the branches whose BN scale has become small relative to
   the main branch's (:func:`repnas_mm.rep.surgery.absorb`: their function
   moves into the main branch), and
2. grows the most salient block(s) to the branches of ``grow_to``
   (:func:`repnas_mm.rep.surgery.grow`: new BNs at a small scale, the main
   kernel adjusted), the block's eval-mode function unchanged both times.
   A block de-parameterized in this step is not grown in it.

Saliency of a block is that of its main kernel ``W``:

- ``synflow`` (default): ``mean(W * dR/dW)`` with ``R`` the summed output
  of a float64 copy of the model with ``|weights|`` on an all-ones input
  (data-free; the mean, since SynFlow's per-layer sums are conserved along
  a chain and would tie);
- ``snip``: ``sum(|W * dL/dW|)`` and ``grad_norm``: ``||dL/dW||``, both
  accumulated over the training iterations since the last step.

Scores are averaged over ranks, so every rank makes the same decisions.
"""
import copy
import inspect
from typing import Dict, List, Sequence, Union

import torch
import torch.nn as nn

from repnas_mm.rep import ODBB
from repnas_mm.rep.block import MAIN
from repnas_mm.rep.surgery import absorb, bn_scale_ratio, grow
from repnas_mm.rep.presets import resolve_branches

from repnas_mm.rep.block import named_odbbs
from repnas_mm.rep.outputs import output_tensors

from .distributed import average_over_ranks

METRICS = ('synflow', 'snip', 'grad_norm')


def _forward_sum(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Sum of every output tensor (classifiers, detectors, backbones)."""
    # mmengine models take mode='tensor' for raw outputs; others take x.
    takes_mode = 'mode' in inspect.signature(model.forward).parameters
    out = model(x, mode='tensor') if takes_mode else model(x)
    return sum(t.sum() for t in output_tensors(out, strict=False))


class DyRep:
    """The DyRep policy.

    Args:
        model: a model whose ODBBs have ``weight_sharing=False`` (from
            ``convert_to_odbb``, or an ODBBNet built that way).
        grow_to (str | list): the branches a grown block gets (a preset,
            filtered per block).
        metric (str): ``synflow``, ``snip`` or ``grad_norm``.
        num_grow (int | float): blocks grown per step (a count, or a ratio
            of the blocks).
        bn_scale (float): BN weight of a new branch.
        deparam_ratio (float): a branch whose mean |BN weight| falls below
            this fraction of the main branch's is de-parameterized.
        input_size (int): the all-ones input of synflow.
    """

    def __init__(self,
                 model: nn.Module,
                 grow_to: Union[str, Sequence[str]] = 'dbb',
                 metric: str = 'synflow',
                 num_grow: Union[int, float] = 1,
                 bn_scale: float = 0.01,
                 deparam_ratio: float = 0.05,
                 input_size: int = 64):
        if metric not in METRICS:
            raise ValueError(f'metric must be one of {METRICS}, got '
                             f'{metric!r}')
        self.model = model
        named = list(named_odbbs(model, fused=False).items())
        if not named:
            raise ValueError('the model has no multi-branch ODBB (convert '
                             'it with convert_to_odbb first)')
        shared = [n for n, m in named if m.weight_sharing]
        if shared:
            raise ValueError(f'DyRep needs weight_sharing=False; {shared[0]} '
                             'shares its main kernel')
        self.block_names = [n for n, _ in named]
        self.blocks: List[ODBB] = [m for _, m in named]
        self.targets = [
            tuple(n for n in resolve_branches(grow_to, b.in_channels,
                                              b.out_channels, b.stride)
                  if n in b.branch_names and n != MAIN)
            for b in self.blocks
        ]
        self.metric = metric
        self.num_grow = num_grow
        self.bn_scale = bn_scale
        self.deparam_ratio = deparam_ratio
        self.input_size = input_size
        self._accumulated = torch.zeros(len(self.blocks))
        self._hooks = []
        if metric != 'synflow':
            for i, block in enumerate(self.blocks):
                weight = block.branches[MAIN].weight
                self._hooks.append(weight.register_hook(
                    lambda g, i=i, w=weight: self._accumulate(i, g, w)))

    # -- saliency ----------------------------------------------------------
    def _accumulate(self, i, grad, weight):
        with torch.no_grad():
            value = ((grad * weight).abs().sum() if self.metric == 'snip'
                     else grad.norm())
        self._accumulated[i] += float(value)

    def _synflow(self) -> torch.Tensor:
        twin = copy.deepcopy(self.model).double()  # SynFlow grows fast
        twin.eval()  # (mmpretrain backbones' train() returns None)
        with torch.no_grad():
            for param in twin.parameters():
                param.abs_()
        twin.zero_grad(set_to_none=True)
        first = next(m for m in twin.modules() if isinstance(m, nn.Conv2d)
                     or isinstance(m, ODBB))
        channels = first.in_channels
        device = next(twin.parameters()).device
        x = torch.ones(1, channels, self.input_size, self.input_size,
                       device=device, dtype=torch.float64)
        with torch.enable_grad():  # also when called under no_grad
            _forward_sum(twin, x).backward()
        twin_blocks = [twin.get_submodule(n) for n in self.block_names]
        scores = []
        for block in twin_blocks:
            w = block.branches[MAIN].weight
            # Per-layer SynFlow totals are conserved along a chain (equal
            # for consecutive convs): score the mean per weight.
            scores.append(float((w.detach() * w.grad).mean())
                          if w.grad is not None else 0.0)
        return torch.tensor(scores)

    def saliency(self) -> torch.Tensor:
        """One score per block (higher = grow first), averaged over ranks."""
        if self.metric == 'synflow':
            scores = self._synflow()
        else:
            scores, self._accumulated = self._accumulated, torch.zeros(
                len(self.blocks))
        return average_over_ranks(scores.double()).float()

    # -- one step ----------------------------------------------------------
    def start(self):
        """Every block with its main branch alone (the original model)."""
        for block in self.blocks:
            extra = [n for n in block.active if n != MAIN]
            if extra:
                absorb(block, extra)
            block.active = [MAIN]

    def step(self) -> dict:
        """De-parameterize, then grow; returns what changed."""
        removed, released = [], []
        for name, block in zip(self.block_names, self.blocks):
            weak = [n for n in block.active if n != MAIN
                    and bn_scale_ratio(block, n) < self.deparam_ratio]
            if weak:
                released += absorb(block, weak)
                removed.append((name, weak))
        scores = self.saliency()
        # A block whose new branches just proved weak is not grown again in
        # the same step (it would only oscillate).
        just_pruned = {name for name, _ in removed}
        growable = [i for i, (b, t) in enumerate(zip(self.blocks,
                                                     self.targets))
                    if any(n not in b.active for n in t)
                    and self.block_names[i] not in just_pruned]
        count = self.num_grow if isinstance(self.num_grow, int) else max(
            1, round(self.num_grow * len(self.blocks)))
        chosen = sorted(growable, key=lambda i: -float(scores[i]))[:count]
        grown = []
        for i in chosen:
            added = grow(self.blocks[i], self.targets[i], self.bn_scale)
            grown.append((self.block_names[i], added))
        return dict(grown=grown, removed=removed, released=released,
                    scores=scores.tolist())

    # -- structure -----------------------------------------------------------
    def structure(self) -> Dict[str, List[str]]:
        return {n: list(b.active) for n, b in zip(self.block_names,
                                                  self.blocks)}

    def load_structure(self, structure: Dict[str, List[str]]):
        if list(structure) != self.block_names:
            raise ValueError('the saved DyRep structure belongs to another '
                             'network (its ODBB names differ)')
        for name, block in zip(self.block_names, self.blocks):
            block.active = structure[name]

    def num_branches(self) -> int:
        return sum(len(b.active) for b in self.blocks)

    def close(self):
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
