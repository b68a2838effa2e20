"""SearchSpace: the RepNAS policy over every ODBB of a model (Sec. 3.4,
Alg. 1).

The model's blocks know nothing of this: the space owns one architecture
parameter ``alpha`` per legal branch, and every iteration hands each block its
active branches and gate values.

Sign convention (the only place it is decided): a branch's score is

    s = sigmoid((alpha + zeta) / temperature),   zeta ~ Logistic(0, 1)

and a *higher* alpha means a more important branch, kept more often. Ranking
all branches of the network together, the space keeps the global top
``budget`` (every block keeps at least its own best branch) and gates a kept
branch's output with ``mask + (s - s.detach())``: exactly 1 in the forward
pass, ``ds/dalpha = s (1 - s) / temperature`` in the backward pass (Eq. 12).
Pruned branches are not run at all.

Two ablations of that policy (``docs/ablation.md``) are options:
``noise=False`` ranks ``alpha`` itself (no logistic noise), and
``gate='soft'`` multiplies a kept branch's output by ``s`` in the forward
pass too (Eq. 11 read literally: the network trains on scaled branches
but is evaluated and fused unscaled).
"""
import weakref
from typing import List, Optional, Union

import torch
import torch.nn as nn
from torch import Tensor

from repnas_mm.rep import ODBB, named_odbbs
from repnas_mm.rep.arch import Architecture, ArchLike, load_arch
from repnas_mm.rep.presets import resolve_budget

_SPACES: 'weakref.WeakKeyDictionary[nn.Module, SearchSpace]' = \
    weakref.WeakKeyDictionary()
GATES = ('straight_through', 'soft')


def noisy_scores(logits: Tensor, temperature: float,
                 generator: Optional[torch.Generator]) -> Tensor:
    """``sigmoid((logits + zeta) / temperature)``, ``zeta ~ Logistic(0, 1)``
    drawn (on the CPU) from ``generator``; no noise without one. The one
    sampling rule of both policies (branches here, widths in
    :mod:`.width_space`)."""
    if generator is not None:
        u = torch.rand(logits.numel(), generator=generator).clamp_(
            1e-6, 1 - 1e-6)
        zeta = torch.log(u) - torch.log1p(-u)  # Logistic(0, 1)
        logits = logits + zeta.to(logits.device)
    return torch.sigmoid(logits / temperature)


class SearchSpace(nn.Module):
    """Architecture parameters and the sampling policy over a model's ODBBs.

    Args:
        model: any module tree containing ODBBs (classifier, detector, ...).
        budget (int | float | None): branches kept in all (a count, or a
            ratio of all legal branches); ``None`` = all of them.
        temperature (float): the lambda of Eq. 11.
        seed (int): seeds the noise generator (the same on every rank).
        noise (bool): add logistic noise to alpha when sampling a mask.
        gate (str): ``'straight_through'`` (1 forward, Eq. 12 backward) or
            ``'soft'`` (``s`` forward and backward).
    """

    def __init__(self,
                 model: nn.Module,
                 budget: Union[int, float, None] = None,
                 temperature: float = 1.0,
                 seed: int = 0,
                 noise: bool = True,
                 gate: str = 'straight_through'):
        super().__init__()
        blocks = named_odbbs(model, fused=False)
        if not blocks:
            raise ValueError(
                'the model has no multi-branch ODBB to search over (is it '
                'fused, or built without ODBBs?)')
        # Plain lists (not a ModuleList): the blocks belong to the model.
        self.block_names: List[str] = list(blocks)
        self._blocks: List[ODBB] = list(blocks.values())
        sizes = [len(b.branch_names) for b in self._blocks]
        self.num_branches = sum(sizes)
        self.alpha = nn.Parameter(torch.zeros(self.num_branches))
        self.register_buffer(
            'block_index',
            torch.repeat_interleave(
                torch.arange(len(sizes)), torch.tensor(sizes)),
            persistent=False)
        self.slices = []
        start = 0
        for size in sizes:
            self.slices.append(slice(start, start + size))
            start += size
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed)
        self.budget = None
        self.configure(budget, temperature, seed, noise, gate)
        self.fixed = False
        self.mask = torch.ones(self.num_branches, dtype=torch.bool)

    # -- construction --------------------------------------------------------
    @classmethod
    def for_model(cls, model: nn.Module, **kwargs) -> 'SearchSpace':
        """The space of ``model``, created on first use (one per model)."""
        if model not in _SPACES:
            space = cls(model, **kwargs)
            param = next(model.parameters(), None)
            _SPACES[model] = space.to(param.device) if param is not None \
                else space
        return _SPACES[model]

    def configure(self,
                  budget=None,
                  temperature: float = 1.0,
                  seed: int = 0,
                  noise: bool = True,
                  gate: str = 'straight_through'):
        """Set the policy: budget, temperature, noise (and its seed), gates."""
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        if gate not in GATES:
            raise ValueError(f'gate must be one of {GATES}, got {gate!r}')
        self.noise = noise
        self.gate = gate
        self.budget = self.num_branches if budget is None else resolve_budget(
            budget, self.num_branches, len(self._blocks))
        self.temperature = temperature
        self.generator.manual_seed(seed)
        return self

    @property
    def blocks(self) -> List[ODBB]:
        return self._blocks

    # -- one iteration --------------------------------------------------------
    def scores(self, noise: bool = True) -> Tensor:
        """``sigmoid((alpha + zeta) / temperature)`` (zeta = 0 without
        noise)."""
        return noisy_scores(self.alpha, self.temperature,
                            self.generator if noise else None)

    def top_k(self, scores: Tensor) -> Tensor:
        """Boolean mask of the global top-``budget``, no block left empty."""
        scores = scores.detach()
        order = torch.argsort(scores, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(self.num_branches, device=order.device)
        index = self.block_index.to(order.device)
        # Each block's best-ranked branch is kept whatever its score ...
        best = torch.full((len(self._blocks), ),
                          self.num_branches,
                          dtype=rank.dtype,
                          device=rank.device).scatter_reduce(
                              0, index, rank, reduce='amin')
        mask = rank == best[index]
        # ... and the rest of the budget goes to the best of the others.
        rest = order[~mask[order]][:self.budget - len(self._blocks)]
        mask[rest] = True
        return mask

    def sample(self, noise: bool = True):
        """(mask, gates) for one training iteration.

        Without ``alpha.requires_grad`` (warm-up, fixed) the gates carry no
        gradient (straight-through ones are then plain 0/1).
        """
        s = self.scores(noise)
        mask = self.top_k(s)
        if self.gate == 'soft':
            return mask, mask.to(s.dtype) * s
        return mask, mask.to(s.dtype) + (s - s.detach())

    def apply(self, mask: Tensor, gates: Optional[Tensor] = None):
        """Hand every block its active branches (and gates)."""
        mask = mask.cpu()
        self.mask = mask.clone()
        for block, sl in zip(self._blocks, self.slices):
            kept = mask[sl]
            block.active = [
                n for n, k in zip(block.branch_names, kept.tolist()) if k
            ]
            block.set_gates(None if gates is None else gates[sl])

    def step(self):
        """Sample and apply a noisy mask (an iteration of Algorithm 1)."""
        if self.fixed:
            return self.mask
        mask, gates = self.sample(noise=self.noise)
        if not self.alpha.requires_grad:  # warm-up: nothing for alpha
            gates = gates.detach() if self.gate == 'soft' else None
        self.apply(mask, gates)
        return mask

    def apply_best(self):
        """Deterministic top-``budget`` on alpha, no gates (evaluation)."""
        mask = self.mask if self.fixed else self.top_k(self.alpha)
        self.apply(mask, None)
        return mask

    def fix(self):
        """Freeze the architecture: deterministic top-k, alpha frozen."""
        if not self.fixed:
            self.apply_best()
            self.fixed = True
        self.alpha.requires_grad_(False)
        return self.mask

    # -- architecture files ---------------------------------------------------
    def architecture(self, arch_name: Optional[str] = None) -> Architecture:
        """The architecture the space would keep now (or the fixed one)."""
        mask = self.mask if self.fixed else self.top_k(self.alpha)
        mask = mask.cpu().tolist()
        alpha = self.alpha.detach().cpu().tolist()
        blocks, alphas = [], []
        for block, sl in zip(self._blocks, self.slices):
            names = block.branch_names
            blocks.append(
                tuple(n for n, k in zip(names, mask[sl]) if k))
            alphas.append(dict(zip(names, alpha[sl])))
        return Architecture(
            arch=arch_name,
            blocks=blocks,
            names=self.block_names,
            budget=self.budget,
            alpha=alphas)

    def load_architecture(self, source: ArchLike):
        """Apply a saved architecture (and its alpha, if any) and fix it."""
        arch = load_arch(source)
        if len(arch.blocks) != len(self._blocks):
            raise ValueError(f'the architecture has {len(arch.blocks)} '
                             f'blocks, the model {len(self._blocks)}')
        mask = torch.zeros(self.num_branches, dtype=torch.bool)
        for i, (block, sl, kept) in enumerate(
                zip(self._blocks, self.slices, arch.blocks)):
            missing = set(kept) - set(block.branch_names)
            if missing:
                raise ValueError(f'block {i} ({self.block_names[i]}) has no '
                                 f'branch {sorted(missing)[0]!r}')
            mask[sl] = torch.tensor([n in kept for n in block.branch_names])
        if arch.alpha is not None:
            with torch.no_grad():
                for block, sl, a in zip(self._blocks, self.slices,
                                        arch.alpha):
                    self.alpha[sl] = torch.tensor(
                        [a.get(n, 0.0) for n in block.branch_names])
        self.budget = int(mask.sum())
        self.apply(mask, None)
        self.fixed = True
        self.alpha.requires_grad_(False)

    # -- state ----------------------------------------------------------------
    def get_extra_state(self):
        return {
            'generator': self.generator.get_state(),
            'fixed': self.fixed,
            'mask': self.mask.clone(),
            'budget': self.budget,
            'temperature': self.temperature,
            'block_names': list(self.block_names),
        }

    def set_extra_state(self, state):
        if state['block_names'] != self.block_names:
            raise ValueError('the saved search state belongs to another '
                             'network (its ODBB names differ)')
        self.generator.set_state(state['generator'])
        self.budget = state['budget']
        self.temperature = state['temperature']
        self.fixed = state['fixed']
        self.mask = state['mask'].clone()
        if self.fixed:
            self.apply(self.mask, None)
            self.alpha.requires_grad_(False)

    def extra_repr(self):
        return (f'blocks={len(self._blocks)}, branches={self.num_branches}, '
                f'budget={self.budget}, temperature={self.temperature}, '
                f'fixed={self.fixed}')
