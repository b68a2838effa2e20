"""WidthSpace: every ODBBNet layer's width, searched under a latency budget
(issue 32).

The branch search (:class:`~.space.SearchSpace`) changes how a network
trains, never what ships: every branch subset fuses into the same KxK conv.
Widths change what ships. The space owns one importance ``beta`` per output
channel of every layer (stem first) and, like the branch policy, ranks them
all together every iteration:

    s = sigmoid((beta + zeta) / temperature),   zeta ~ Logistic(0, 1)

A threshold on ``s / cost`` gives each layer a width: its channels above
the threshold, rounded down to a multiple of its step (8, and of the groups of
its own conv and of the next one), never below its floor. The threshold is
the lowest (widest network) whose *predicted* latency, from a measured
:class:`~repnas_mm.deploy.latency_table.LatencyTable`, fits the budget. Each
channel's ``cost`` is the latency one channel of its layer saves, from the
same table, relative to the mean: the ranking keeps the most importance per
millisecond (the greedy answer to a knapsack under the budget), so a channel
at high resolution must matter more to stay than one at low resolution
(``cost_aware=False`` ranks ``s`` alone). Each
layer then keeps its top channels (as many per group as a grouped conv on
either side needs) and gates its output with ``mask + (s - s.detach())``:
exactly 0/1 in the forward pass, so the gated full-width network computes
what the narrow one will (:func:`repnas_mm.models.widths.narrow_odbbnet`),
and the straight-through gradient reaches ``beta`` of kept and pruned
channels alike (the full-width network computes every channel).
"""
import math
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from repnas_mm.rep.widths import balanced_top

from .space import noisy_scores


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


class WidthSpace(nn.Module):
    """Channel importances of an ODBBNet and the policy over its widths.

    Args:
        backbone: an ODBBNet (multi-branch; its layers get the gates).
        table: the measured latency table of its layers
            (:mod:`repnas_mm.deploy.latency_table`).
        input_size (int): the deployment input size the table measured.
        budget_ms (float, optional): the latency budget in milliseconds;
        budget_ratio (float, optional): or a ratio of the full-width
            network's predicted latency (one of the two).
        num_classes (int, optional): a classifier head to include.
        multiple (int): widths are multiples of this (and of the groups).
        floor (float): no layer narrower than this ratio of its width.
        temperature (float), seed (int), noise (bool): as the branch policy.
        cost_aware (bool): rank channels by score per unit of latency (a
            channel of a layer at high resolution costs more than one at
            low resolution; default), or by score alone.
    """

    def __init__(self,
                 backbone: nn.Module,
                 table,
                 input_size: int,
                 budget_ms: Optional[float] = None,
                 budget_ratio: Optional[float] = None,
                 num_classes: Optional[int] = None,
                 multiple: int = 8,
                 floor: float = 0.25,
                 temperature: float = 1.0,
                 seed: int = 0,
                 noise: bool = True,
                 cost_aware: bool = True):
        super().__init__()
        from repnas_mm.deploy.latency_table import network_shapes
        self._backbone = [backbone]  # not a submodule: the model owns it
        self.input_size = input_size
        self.table = table
        self._shapes = lambda widths: network_shapes(
            backbone, input_size, num_classes, widths)
        layers = backbone.layers()
        self.full = list(backbone.widths)
        groups = [layer.conv.groups for layer in layers] + [1]
        # A layer's outputs are the next layer's inputs: both convs' groups.
        self.balance = [_lcm(groups[i], groups[i + 1])
                        for i in range(len(layers))]
        self.steps = [_lcm(multiple, b) for b in self.balance]
        self.floors = [min(w, max(s, math.ceil(w * floor / s) * s))
                       for w, s in zip(self.full, self.steps)]
        self.beta = nn.Parameter(torch.zeros(sum(self.full)))
        bounds = [0] + list(torch.tensor(self.full).cumsum(0).tolist())
        self.slices = [slice(a, b) for a, b in zip(bounds, bounds[1:])]
        self.layer_of = torch.cat([torch.full((w, ), i)
                                   for i, w in enumerate(self.full)])
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        self.temperature = temperature
        self.noise = noise
        self.generator = torch.Generator().manual_seed(seed)
        full_ms = self.predicted_ms(self.full)
        if (budget_ms is None) == (budget_ratio is None):
            raise ValueError('give one of budget_ms and budget_ratio')
        self.budget_ms = float(budget_ms if budget_ms is not None
                               else budget_ratio * full_ms)
        narrowest = self.predicted_ms(self.floors)
        if narrowest > self.budget_ms:
            raise ValueError(
                f'latency budget {self.budget_ms:.3f} ms is below the '
                f'narrowest network\'s predicted {narrowest:.3f} ms (floor '
                f'{floor:g} of every width); raise the budget or lower the '
                'floor')
        self.cost_aware = cost_aware
        # Not a buffer: made from the table again on every construction.
        self.cost = self._layer_costs()
        self.fixed = False
        self.keep: List[Tensor] = [torch.arange(w) for w in self.full]

    @classmethod
    def from_config(cls, model: nn.Module, widths: dict, **overrides):
        """The space of ``model``'s one ODBBNet from ``RepNASHook``'s
        ``widths`` dict (``table``: the JSON file, ``runtime``: the key it
        must have, the rest :class:`WidthSpace`'s arguments; the head's
        classes unless given), ``overrides`` on top."""
        from repnas_mm.deploy.latency_table import LatencyTable, runtime_key
        from repnas_mm.models.backbones.odbbnet import ODBBNet
        nets = [m for m in model.modules() if isinstance(m, ODBBNet)]
        if len(nets) != 1:
            raise ValueError('RepNASHook(widths=...) searches the widths of '
                             f'one ODBBNet; the model has {len(nets)}')
        cfg = dict(widths, **overrides)
        runtime = cfg.pop('runtime', None)
        table = LatencyTable.load(
            cfg.pop('table'), runtime_key(**runtime) if runtime else None)
        if 'budget_ratio' in overrides or 'budget_ms' in overrides:
            for key in {'budget_ratio', 'budget_ms'} - set(overrides):
                cfg.pop(key, None)
        head = getattr(model, 'head', None)
        cfg.setdefault('num_classes', getattr(head, 'num_classes', None))
        return cls(nets[0], table, **cfg)

    @property
    def backbone(self) -> nn.Module:
        return self._backbone[0]

    def predicted_ms(self, widths: Sequence[int]) -> float:
        """The table's latency of the network with these widths."""
        return self.table.predict(self._shapes(list(widths)))

    # -- one iteration --------------------------------------------------------
    def scores(self, noise: bool = True) -> Tensor:
        """``sigmoid((beta + zeta) / temperature)`` (zeta = 0 without
        noise), as the branch policy scores alpha."""
        return noisy_scores(self.beta, self.temperature,
                            self.generator if noise else None)

    def _layer_costs(self) -> Tensor:
        """Every channel's latency: the predicted milliseconds one step of
        its layer saves from the full-width network (its own conv's output
        and the next conv's input), per channel, relative to the mean over
        channels. Never below 1% of that mean (an interpolated table need
        not be monotone)."""
        full_ms = self.predicted_ms(self.full)
        costs = []
        for i, (width, step) in enumerate(zip(self.full, self.steps)):
            narrower = list(self.full)
            narrower[i] = max(step, width - step)
            saved = full_ms - self.predicted_ms(narrower)
            costs.append(saved / max(width - narrower[i], 1))
        per_channel = torch.cat([torch.full((w, ), c)
                                 for w, c in zip(self.full, costs)])
        mean = per_channel.clamp(min=0).mean()
        if mean <= 0:  # a flat table: every channel costs the same
            return torch.ones_like(per_channel)
        return (per_channel / mean).clamp(min=0.01)

    def ranking(self, scores: Tensor) -> Tensor:
        """What the threshold cuts: each channel's score per unit of its
        latency (``cost_aware``; the greedy answer to keeping the most
        importance under a latency budget) or its score alone."""
        scores = scores.detach().cpu()
        return scores / self.cost if self.cost_aware else scores

    def _widths_top(self, order: Tensor, k: int) -> List[int]:
        """Each layer's width when the first ``k`` channels of ``order``
        are kept: its count among them, rounded down to its step, within
        its floor and width."""
        counts = torch.bincount(self.layer_of[order[:k]],
                                minlength=len(self.full)).tolist()
        return [full if n == full else max(floor, n // step * step)
                for n, full, step, floor in zip(counts, self.full,
                                                self.steps, self.floors)]

    def widths_for(self, scores: Tensor) -> List[int]:
        """The widest widths whose predicted latency fits the budget: the
        most channels, best :meth:`ranking` first (ties by position)."""
        order = self.ranking(scores).argsort(descending=True, stable=True)
        low, high = 0, len(order)  # how many channels the threshold keeps
        if self.predicted_ms(self._widths_top(order, high)) <= \
                self.budget_ms:
            return list(self.full)
        while low < high:  # the largest k that fits
            mid = (low + high + 1) // 2
            if self.predicted_ms(self._widths_top(order, mid)) <= \
                    self.budget_ms:
                low = mid
            else:
                high = mid - 1
        return self._widths_top(order, low)

    def keep_for(self, scores: Tensor, widths: Sequence[int]) -> List[Tensor]:
        """Each layer's kept channels: its top ``width`` scores, as many in
        each group as the convs on both sides need."""
        return [balanced_top(scores[sl], w, b)
                for sl, w, b in zip(self.slices, widths, self.balance)]

    def sample(self, noise: bool = True):
        """(kept channels, gates) for one training iteration."""
        s = self.scores(noise)
        keep = self.keep_for(s, self.widths_for(s))
        gates = []
        for sl, kept in zip(self.slices, keep):
            mask = torch.zeros(sl.stop - sl.start, device=s.device,
                               dtype=s.dtype)
            mask[kept.to(s.device)] = 1.0
            gates.append(mask + (s[sl] - s[sl].detach()))
        return keep, gates

    def apply(self, keep: Sequence[Tensor], gates=None):
        """Gate every layer: ``gates`` (straight-through), or 0/1 masks of
        ``keep``."""
        self.keep = [k.cpu() for k in keep]
        if gates is None:
            gates = []
            for k, full in zip(self.keep, self.full):
                mask = torch.zeros(full)
                mask[k] = 1.0
                gates.append(mask.to(self.beta))
        self.backbone.set_channel_gates(gates)

    def step(self):
        """Sample and apply noisy widths (an iteration of the search)."""
        if self.fixed:
            return self.keep
        keep, gates = self.sample(noise=self.noise)
        if not self.beta.requires_grad:
            gates = None
        self.apply(keep, gates)
        return keep

    def apply_best(self):
        """The deterministic widths of ``beta`` itself, 0/1 gates."""
        if not self.fixed:
            s = self.scores(noise=False)
            self.apply(self.keep_for(s, self.widths_for(s)))
        else:
            self.apply(self.keep)
        return self.keep

    def fix(self):
        """Freeze the widths and kept channels; ``beta`` frozen."""
        if not self.fixed:
            self.apply_best()
            self.fixed = True
        self.beta.requires_grad_(False)
        return self.keep

    @property
    def widths(self) -> List[int]:
        return [len(k) for k in self.keep]

    # -- state ----------------------------------------------------------------
    def get_extra_state(self):
        return dict(generator=self.generator.get_state(), fixed=self.fixed,
                    keep=[k.clone() for k in self.keep],
                    budget_ms=self.budget_ms, full=list(self.full))

    def set_extra_state(self, state):
        if state['full'] != self.full:
            raise ValueError('the saved width search belongs to another '
                             'network (its full widths differ)')
        self.generator.set_state(state['generator'])
        self.budget_ms = state['budget_ms']
        self.fixed = state['fixed']
        self.keep = [k.clone() for k in state['keep']]
        if self.fixed:
            self.apply(self.keep)
            self.beta.requires_grad_(False)

    def extra_repr(self):
        return (f'layers={len(self.full)}, channels={sum(self.full)}, '
                f'budget={self.budget_ms:.3f} ms, fixed={self.fixed}')


__all__ = ['WidthSpace']
