"""The width study (issue 32, tools/benchmark_widths.py): its methods'
configs, random widths under a budget, the report's paired numbers and
goals, and a tiny study through the tools."""
import json

import pytest

import repnas_mm  # noqa: F401
from repnas_mm.compare import CompareError
from repnas_mm.compare.widths import (goals, random_widths, study_methods,
                                      summarize, uniform_widths, width_space,
                                      widths_key, write_report)
from repnas_mm.config import read_config

from .conftest import cls_data_options, run_tool
from .test_width_search import synthetic_table, width_cfg


@pytest.fixture
def study_cfg(tmp_path):
    table = tmp_path / 'table.json'
    synthetic_table(table)
    return read_config(str(width_cfg(tmp_path, table)))


def test_uniform_and_random_widths_keep_steps_floors_and_budget(study_cfg):
    space = width_space(study_cfg)
    assert space.full == [16, 16, 32, 32, 64, 64, 128]
    assert uniform_widths(space, 1.0) == space.full
    assert uniform_widths(space, 0.5) == [8, 8, 16, 16, 32, 32, 64]
    # 0.25 of 16 is 4: the floor (one step of 8) holds.
    assert uniform_widths(space, 0.25) == [8, 8, 8, 8, 16, 16, 32]
    budget = space.predicted_ms(uniform_widths(space, 0.5))
    draws = [random_widths(space, budget, seed) for seed in (0, 1, 2)]
    assert draws[0] == random_widths(space, budget, 0)  # seeded
    assert len({widths_key(w) for w in draws}) == 3
    for widths in draws:
        assert 0.9 * budget <= space.predicted_ms(widths) <= budget
        assert all(w % 8 == 0 and floor <= w <= full for w, floor, full
                   in zip(widths, space.floors, space.full))
    with pytest.raises(CompareError, match='no random widths'):
        random_widths(space, 0.5 * space.predicted_ms(space.floors), 0,
                      tries=50)


def test_every_method_differs_only_in_its_widths(study_cfg, tmp_path):
    space = width_space(study_cfg)
    methods = study_methods(study_cfg, space, (0.5, 1.0))
    assert list(methods) == ['uniform-1', 'uniform-0.5', 'search-0.5',
                             'random-0.5']
    half = space.predicted_ms([8, 8, 16, 16, 32, 32, 64])
    assert methods['search-0.5']['budget_ms'] == pytest.approx(half)
    configs = {label: m['make'](1, str(tmp_path / label))
               for label, m in methods.items()}
    for label, cfg in configs.items():
        hook = cfg.custom_hooks[0]
        assert hook['type'] == 'RepNASHook' and hook['seed'] == 1
        assert cfg.randomness.seed == 1
        assert cfg.train_cfg == study_cfg.train_cfg  # one schedule
        if label.startswith('search'):
            assert hook['widths']['budget_ms'] == pytest.approx(half)
            assert 'budget_ratio' not in hook['widths']
            assert 'widths' not in cfg.model.backbone
        else:  # fixed widths, the branch search only
            assert 'widths' not in hook
    assert 'widths' not in configs['uniform-1'].model.backbone
    assert configs['uniform-0.5'].model.backbone.widths == \
        [8, 8, 16, 16, 32, 32, 64]
    assert configs['uniform-0.5'].model.head.in_channels == 64
    drawn = configs['random-0.5'].model.backbone.widths
    assert drawn == random_widths(space, half, 1)
    assert configs['random-0.5'].model.head.in_channels == drawn[-1]


def test_the_report_pairs_every_network_with_full_width_and_its_budget(
        study_cfg, tmp_path):
    space = width_space(study_cfg)
    methods = study_methods(study_cfg, space, (0.5, 1.0))
    full, half = widths_key(space.full), widths_key(
        uniform_widths(space, 0.5))
    narrow = '8-8-8-8-16-16-32'
    runs = [dict(method=label, seed=s, top1=top1, widths=w,
                 train_seconds=10.0)
            for label, w, top1s in (
                ('uniform-1', None, (80.0, 82.0)),
                ('uniform-0.5', [int(x) for x in half.split('-')],
                 (70.0, 72.0)),
                ('search-0.5', [int(x) for x in narrow.split('-')],
                 (79.0, 81.0)))
            for s, top1 in zip((0, 1), top1s)]
    # Seconds per call, round by round: the machine slows down in round 2,
    # which the paired ratios cancel and the medians do not.
    latency = {'predicted': {full: 1.0, half: 0.5, narrow: 0.4},
               1: {full: [1e-3, 2e-3, 1e-3], half: [5e-4, 1e-3, 5e-4],
                   narrow: [4e-4, 8e-4, 4e-4]}}
    rows = summarize(runs, methods, latency, space)
    assert rows['uniform-1']['top1_mean'] == 81.0
    assert rows['uniform-1']['top1_std'] == pytest.approx(2 ** 0.5)
    assert rows['search-0.5']['ms_b1'] == pytest.approx(0.4)
    assert rows['search-0.5']['speedup_b1'] == pytest.approx(2.5)
    assert rows['search-0.5']['vs_budget_b1'] == pytest.approx(0.8)
    assert rows['uniform-0.5']['vs_budget_b1'] == pytest.approx(1.0)
    assert rows['search-0.5']['predicted_vs_measured'] == pytest.approx(1.0)
    lines = '\n'.join(goals(rows))
    assert 'search 80.00 vs uniform 71.00 (+9.00): at least as accurate' \
        in lines
    assert 'within 1.05x at batch 1' in lines
    assert 'matches it at >= 1.5x' in lines
    assert '>= 1.0 better at one budget or more: yes' in lines
    assert 'worst 0.0% off the median, 0.0% off the least disturbed round' \
        ': yes' in lines
    assert rows['search-0.5']['min_speedup_b1'] == pytest.approx(2.5)
    assert rows['search-0.5']['min_vs_budget_b1'] == pytest.approx(0.8)
    study = dict(config='c.py', command='python tools/benchmark_widths.py',
                 seeds=[0, 1], runtime='onnxruntime', input_size=32,
                 repeats=3)
    write_report(str(tmp_path), study, rows, latency, [1])
    table = (tmp_path / 'results.md').read_text()
    assert '| search-0.5 | 8-8-8-8-16-16-32 | 80.00 ± 1.41 | 0.400 | ' \
        '0.400 | 2.50x | 0.400 | 2.50x | 10 |' in table
    assert (tmp_path / 'accuracy_latency.png').stat().st_size > 10000


@pytest.mark.slow
def test_a_tiny_width_study_runs_measures_and_reports(tmp_path,
                                                      cifar10_tiny):
    table = tmp_path / 'table.json'
    synthetic_table(table)
    cfg = width_cfg(tmp_path, table)
    work = tmp_path / 'study'
    out = run_tool('tools/benchmark_widths.py', cfg, '--work-dir', work,
                   '--multipliers', '0.5', '1.0', '--seeds', '0',
                   '--batches', '1', '--repeats', '2', '--cfg-options',
                   *cls_data_options(cifar10_tiny),
                   'train_cfg.max_epochs=2', 'custom_hooks.0.fix_epoch=1')
    assert '4 of 4 runs finished' in out.stdout
    results = json.loads((work / 'results.json').read_text())
    rows = results['methods']
    assert set(rows) == {'uniform-1', 'uniform-0.5', 'search-0.5',
                         'random-0.5'}
    runs = {r['method']: r for r in results['runs']}
    assert runs['uniform-1']['widths'] is None
    assert runs['uniform-0.5']['widths'] == [8, 8, 16, 16, 32, 32, 64]
    space_budget = rows['search-0.5']['budget_ms']
    for label in ('search-0.5', 'random-0.5'):
        widths = runs[label]['widths']
        assert widths is not None and sum(widths) < 352
        # The shipped network fits the budget on the table that set it.
        assert rows[label]['predicted_ms'] <= space_budget + 1e-9
        assert runs[label]['fused_error'] < 1e-4
    for row in rows.values():  # every shipped network was timed
        assert row['ms_b1'] > 0 and len(row['widths']) == 1
    report = (work / 'results.md').read_text()
    assert 'Goals (issue 32):' in report and '| search-0.5 |' in report
    assert (work / 'accuracy_latency.png').stat().st_size > 10000
