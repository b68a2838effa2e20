"""A searched architecture is data: which branches every block keeps.

File format (JSON)::

    {
      "arch": "A0",                 # the backbone layout it was searched on
      "budget": 50,                 # total branches kept (or null)
      "blocks": [                   # one entry per ODBB, in module order
        {"name": "stem", "branches": ["1x1", "kxk"],
         "alpha": {"1x1": 0.3, "kxk": 1.2, ...}},     # alpha: optional
        ...
      ]
    }

``blocks`` may also be a plain list of branch lists. Loading needs nothing
but the standard library, so a fresh ODBBNet rebuilds a searched network
without any search code. :func:`branches_per_block` turns any ``branches=``
value of a network (preset, lists, file, random) into one spec per block.
"""
import json
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

from repnas_mm.atomic import atomic_path

from .branches import legal_branches
from .presets import canonical, random_architecture


@dataclass
class Architecture:
    """Kept branches per block (and, optionally, the search's final alpha)."""
    arch: Optional[str]
    blocks: List[tuple]
    names: Optional[List[str]] = None
    budget: Optional[int] = None
    alpha: Optional[List[Dict[str, float]]] = None
    extra: dict = field(default_factory=dict)

    @property
    def num_branches(self) -> int:
        return sum(len(b) for b in self.blocks)

    def to_dict(self) -> dict:
        blocks = []
        for i, kept in enumerate(self.blocks):
            entry = {'name': self.names[i] if self.names else f'block_{i}'}
            entry['branches'] = list(kept)
            if self.alpha is not None:
                entry['alpha'] = {
                    k: round(float(v), 6)
                    for k, v in self.alpha[i].items()
                }
            blocks.append(entry)
        out = {'arch': self.arch, 'budget': self.budget,
               'num_branches': self.num_branches}
        out.update(self.extra)
        out['blocks'] = blocks
        return out

    @classmethod
    def from_dict(cls, data: dict) -> 'Architecture':
        if 'blocks' not in data:
            raise ValueError('an architecture needs a "blocks" list')
        blocks, names, alpha = [], [], []
        for i, entry in enumerate(data['blocks']):
            if isinstance(entry, dict):
                branches = entry.get('branches')
                names.append(entry.get('name', f'block_{i}'))
                alpha.append(entry.get('alpha'))
            else:
                branches = entry
                names.append(f'block_{i}')
                alpha.append(None)
            if not branches:
                raise ValueError(f'block {i} ({names[-1]}) keeps no branch')
            blocks.append(canonical(list(branches)))
        known = {'arch', 'budget', 'blocks', 'num_branches'}
        return cls(
            arch=data.get('arch'),
            blocks=blocks,
            names=names,
            budget=data.get('budget'),
            alpha=alpha if all(a is not None for a in alpha) else None,
            extra={k: v
                   for k, v in data.items() if k not in known})


ArchLike = Union[str, os.PathLike, dict, Architecture]


def load_arch(source: ArchLike) -> Architecture:
    """An :class:`Architecture` from a JSON file path, a dict, or itself."""
    if isinstance(source, Architecture):
        return source
    if isinstance(source, dict):
        return Architecture.from_dict(source)
    path = os.fspath(source)
    if not osp.isfile(path):
        raise FileNotFoundError(f'architecture file not found: {path}')
    with open(path, encoding='utf-8') as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f'{path} is not a JSON architecture file: '
                             f'{exc}') from exc
    return Architecture.from_dict(data)


def save_arch(arch: Architecture, path: Union[str, os.PathLike]):
    """Write ``arch`` as JSON atomically (no half-written file on failure)."""
    with atomic_path(path) as tmp:
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(arch.to_dict(), f, indent=2)
            f.write('\n')


BlockShape = Tuple[int, int, int, int]  # in, out, stride, groups


def branches_per_block(spec, shapes: Sequence[BlockShape],
                       arch_name: Optional[str] = None) -> List:
    """One branch spec per block of a network, from any ``branches=`` value.

    ``spec``: a preset name (every block: its legal part), a list of branch
    names (every block: its legal part; none legal is an error), a per-block
    list of lists (checked strictly by the blocks), a searched architecture
    (a ``.json`` path, its dict, an :class:`Architecture`; searched on
    ``arch_name`` when it says), or ``dict(type='random', budget=C,
    seed=0)``, the paper's random baseline (``C`` a count or a ratio).
    """
    num = len(shapes)
    if isinstance(spec, str) and not is_arch_file(spec):
        return [spec] * num
    if isinstance(spec, dict) and spec.get('type') == 'random':
        legal = [legal_branches(cin, cout, s) for cin, cout, s, _ in shapes]
        return random_architecture(legal, spec['budget'], spec.get('seed', 0))
    if isinstance(spec, (dict, Architecture)) or is_arch_file(spec):
        arch = load_arch(spec)
        if arch.arch is not None and arch_name is not None and \
                arch.arch != arch_name:
            raise ValueError(f'the architecture was searched on '
                             f'{arch.arch!r}, not {arch_name!r}')
        per_block = arch.blocks
    elif all(isinstance(b, str) for b in spec):
        names = canonical(list(spec))
        per_block = []
        for i, (cin, cout, stride, _) in enumerate(shapes):
            kept = tuple(n for n in names
                         if n in legal_branches(cin, cout, stride))
            if not kept:
                raise ValueError(f'block {i} ({cin} -> {cout}, stride '
                                 f'{stride}) has no legal branch in '
                                 f'{list(names)}')
            per_block.append(kept)
        return per_block
    else:
        per_block = [tuple(b) for b in spec]
    if len(per_block) != num:
        raise ValueError(f'{len(per_block)} branch lists given for {num} '
                         f'blocks' + (f' of ODBBNet-{arch_name}'
                                      if arch_name else ''))
    return per_block


def is_arch_file(spec) -> bool:
    """Whether a ``branches=`` value names an architecture file."""
    return isinstance(spec, (str, os.PathLike)) and os.fspath(spec).endswith(
        '.json')

