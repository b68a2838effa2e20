"""Presets, the random-architecture baseline, and architecture files."""
import json

import pytest

from repnas_mm.rep import PRESETS, random_architecture, resolve_branches
from repnas_mm.rep.arch import Architecture, load_arch, save_arch


def test_named_presets():
    assert PRESETS['plain'] == ('kxk', )
    assert set(PRESETS['repvgg']) == {'kxk', '1x1', 'identity'}
    assert set(PRESETS['acb']) == {'kxk', '1xk', 'kx1'}
    assert set(PRESETS['dbb']) == {'kxk', '1x1', '1x1_kxk', '1x1_avg'}
    assert len(PRESETS['full']) == 7
    # Canonical order whatever the preset's own order.
    assert resolve_branches('repvgg', 8, 8, 1) == ('1x1', 'kxk', 'identity')
    assert resolve_branches('repvgg', 8, 8, 2) == ('1x1', 'kxk')


def test_random_architecture_is_seeded_and_meets_the_budget():
    legal = [('1x1', 'kxk', '1xk')] * 5 + [('1x1', 'kxk', 'identity')] * 3
    a = random_architecture(legal, budget=13, seed=3)
    assert a == random_architecture(legal, budget=13, seed=3)
    assert a != random_architecture(legal, budget=13, seed=4)
    assert sum(len(b) for b in a) == 13
    assert all(b and set(b) <= set(lg) for b, lg in zip(a, legal))
    # Extremes: one branch per block, or all of them.
    assert all(len(b) == 1 for b in random_architecture(legal, 8))
    assert [set(b) for b in random_architecture(legal, 24)] == \
        [set(lg) for lg in legal]
    for bad in (7, 25):
        with pytest.raises(ValueError, match=r'\[8, 24\]'):
            random_architecture(legal, bad)


def test_arch_file_round_trip(tmp_path):
    arch = Architecture(
        arch='A0',
        blocks=[('kxk', ), ('1x1', 'kxk', 'identity')],
        names=['stem', 'stage_1.0'],
        budget=4,
        alpha=[{'kxk': 1.5}, {'1x1': 0.25, 'kxk': 2.0, 'identity': -0.5}])
    path = tmp_path / 'sub' / 'arch.json'
    save_arch(arch, path)
    assert not list(path.parent.glob('*.part'))
    data = json.loads(path.read_text())
    assert data['num_branches'] == 4 and data['blocks'][1]['name'] == \
        'stage_1.0'
    back = load_arch(path)
    assert back.blocks == arch.blocks and back.names == arch.names
    assert back.alpha == arch.alpha and back.budget == 4
    # A plain list of lists is an architecture too.
    assert load_arch({'blocks': [['kxk', '1x1']]}).blocks == [('1x1', 'kxk')]


def test_arch_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.json'):
        load_arch(tmp_path / 'nope.json')
    bad = tmp_path / 'bad.json'
    bad.write_text('{not json')
    with pytest.raises(ValueError, match='not a JSON architecture'):
        load_arch(bad)
    with pytest.raises(ValueError, match='keeps no branch'):
        load_arch({'blocks': [[]]})
    with pytest.raises(ValueError, match="'5x5'"):
        load_arch({'blocks': [['5x5']]})
