"""Named branch sets, and the random architecture of the paper's baseline.

A preset names the branches a block *may* have; a block keeps those that are
legal for its shape (``identity`` only when in == out and stride 1), as
RepVGG does in its down-sampling blocks. An explicit list of names is taken
as it is and checked strictly by the block.
"""
import random
from typing import Dict, List, Sequence, Tuple, Union

from .branches import BRANCH_NAMES, legal_branches

PRESETS: Dict[str, Tuple[str, ...]] = {
    'plain': ('kxk', ),
    'repvgg': ('kxk', '1x1', 'identity'),
    'acb': ('kxk', '1xk', 'kx1'),
    'dbb': ('kxk', '1x1', '1x1_kxk', '1x1_avg'),
    'full': BRANCH_NAMES,
}

BranchSpec = Union[str, Sequence[str]]


class BudgetError(ValueError):
    """A branch budget no architecture of the model can have."""


def canonical(names: Sequence[str]) -> Tuple[str, ...]:
    """``names`` in the fixed order of :data:`BRANCH_NAMES`, checked."""
    unknown = [n for n in names if n not in BRANCH_NAMES]
    if unknown:
        raise ValueError(f'unknown branch {unknown[0]!r}; branches are '
                         f'{BRANCH_NAMES}')
    if len(set(names)) != len(names):
        raise ValueError(f'duplicate branch in {list(names)}')
    return tuple(n for n in BRANCH_NAMES if n in names)


def resolve_branches(spec: BranchSpec, in_channels: int, out_channels: int,
                     stride: int) -> Tuple[str, ...]:
    """The branch names for one block, from a preset name or a list.

    A preset is filtered to the block's legal branches; a list is returned
    in canonical order and must be legal (``ValueError`` naming the first
    illegal branch otherwise).
    """
    legal = legal_branches(in_channels, out_channels, stride)
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f'unknown branch preset {spec!r}; presets are '
                             f'{sorted(PRESETS)} (or a list of branches)')
        return canonical([n for n in PRESETS[spec] if n in legal])
    names = canonical(list(spec))
    if not names:
        raise ValueError('a block needs at least one branch')
    for name in names:
        if name not in legal:
            raise ValueError(
                f'branch {name!r} is not legal in a block with '
                f'{in_channels} -> {out_channels} channels and stride '
                f'{stride} (identity needs in == out and stride 1)')
    return names


def resolve_budget(budget: Union[int, float], num_branches: int,
                   num_blocks: int) -> int:
    """A branch count from a count (int) or a ratio of all branches (float).

    Raises :class:`BudgetError` unless the count lies between ``num_blocks``
    (one branch per block) and ``num_branches`` (every legal branch).
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise BudgetError(f'budget must be an int (a branch count) or a '
                          f'float (a ratio of all branches), got {budget!r}')
    count = round(budget * num_branches) if isinstance(budget, float) else \
        budget
    if not num_blocks <= count <= num_branches:
        raise BudgetError(
            f'budget {budget!r} gives {count} branches; it must lie in '
            f'[{num_blocks}, {num_branches}] (one branch per block at least, '
            'every legal branch at most)')
    return count


def random_architecture(legal_per_block: Sequence[Sequence[str]],
                        budget: Union[int, float],
                        seed: int = 0) -> List[Tuple[str, ...]]:
    """A random architecture with ``budget`` branches in all (seeded).

    ``budget`` is a count or a ratio of all legal branches
    (:func:`resolve_budget`); every block keeps at least one branch. This is
    the random-search baseline of RepNAS Sec. 4.1.
    """
    num_blocks = len(legal_per_block)
    budget = resolve_budget(budget, sum(len(b) for b in legal_per_block),
                            num_blocks)
    rng = random.Random(seed)
    # One branch per block first, then the rest uniformly among the others.
    kept = [{rng.choice(list(block))} for block in legal_per_block]
    rest = [(i, name) for i, block in enumerate(legal_per_block)
            for name in block if name not in kept[i]]
    for i, name in rng.sample(rest, budget - num_blocks):
        kept[i].add(name)
    return [canonical(list(k)) for k in kept]
