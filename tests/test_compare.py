"""tools/compare_architectures.py: method configs, a tiny comparison, resume, table."""
import json
import statistics

import pytest
from mmengine.config import Config

import repnas_mm  # noqa: F401
from repnas_mm.compare import (CompareError, method_config, read_variants,
                               summarize)

from repnas_mm.evidence import machine_paths, this_machine

from .conftest import REPO, TINY_SEARCH as SEARCH_CFG, run_tool


def test_method_configs_change_only_the_architecture(tmp_path):
    cfg = Config.fromfile(SEARCH_CFG)
    search = method_config(cfg, 'repnas', 3, str(tmp_path))
    hook = [h for h in search.custom_hooks if h.type == 'RepNASHook'][0]
    assert hook.seed == 3 and search.randomness.seed == 3
    assert search.optim_wrapper.constructor == \
        'RepNASOptimWrapperConstructor'
    for method in ('random', 'plain', 'dbb'):
        out = method_config(cfg, method, 1, str(tmp_path))
        assert not [h for h in out.custom_hooks if h.type == 'RepNASHook']
        assert 'constructor' not in out.optim_wrapper
        assert 'alpha_optimizer' not in out.optim_wrapper
        # The same schedule, data and optimizer as the search.
        assert out.optim_wrapper.optimizer == cfg.optim_wrapper.optimizer
        assert out.param_scheduler == cfg.param_scheduler
        assert out.train_dataloader == cfg.train_dataloader
        assert out.randomness.seed == 1
    assert method_config(cfg, 'dbb', 0, str(tmp_path)).model.backbone \
        .branches == 'dbb'
    arch = json.loads((tmp_path / 'random_arch.json').read_text())
    assert arch['num_branches'] == arch['budget'] == 22  # half of 44
    with pytest.raises(CompareError, match='unknown method'):
        method_config(cfg, 'oracle', 0, str(tmp_path))
    # 'searched' trains what the repnas run of the same seed found.
    run_dir = tmp_path / 'runs' / 'searched' / 'seed_1'
    with pytest.raises(CompareError, match='needs the repnas run'):
        method_config(cfg, 'searched', 1, str(run_dir))
    found = tmp_path / 'runs' / 'repnas' / 'seed_1' / 'train'
    found.mkdir(parents=True)
    (found / 'searched_arch.json').write_text('{}')
    out = method_config(cfg, 'searched', 1, str(run_dir))
    assert out.model.backbone.branches == str(found / 'searched_arch.json')
    assert not [h for h in out.custom_hooks if h.type == 'RepNASHook']


def test_a_retraining_search_compares_with_its_second_stage(tmp_path):
    cfg = Config.fromfile(SEARCH_CFG)
    cfg.merge_from_dict({
        'train_cfg.max_epochs': 9, 'custom_hooks.0.fix_epoch': 3,
        'custom_hooks.0.at_fix': 'retrain', 'param_scheduler.begin': 3,
        'param_scheduler.end': 9, 'param_scheduler.T_max': 6})
    search = method_config(cfg, 'repnas', 0, str(tmp_path))
    assert search.train_cfg.max_epochs == 9
    assert search.param_scheduler == cfg.param_scheduler
    # The other methods train 6 epochs with the search's second schedule.
    for method in ('random', 'repvgg'):
        out = method_config(cfg, method, 0, str(tmp_path))
        assert out.train_cfg.max_epochs == 6
        assert out.param_scheduler == dict(cfg.param_scheduler, begin=0,
                                           end=6)
    # A list: the search stage's own schedulers are dropped.
    cfg.param_scheduler = [dict(type='LinearLR', begin=0, end=3),
                           dict(type='CosineAnnealingLR', begin=3, end=9),
                           dict(type='ConstantLR', begin=5)]
    out = method_config(cfg, 'plain', 0, str(tmp_path))
    assert out.param_scheduler == [
        dict(type='CosineAnnealingLR', begin=0, end=6),
        dict(type='ConstantLR', begin=2)]


def test_variants_file_is_checked(tmp_path):
    path = tmp_path / 'variants.py'
    path.write_text("variants = {'a': {'custom_hooks.0.noise': False}}\n")
    assert read_variants(str(path)) == {'a': {'custom_hooks.0.noise': False}}
    path.write_text("variants = {'a': False}\n")
    with pytest.raises(CompareError, match='must define variants'):
        read_variants(str(path))
    with pytest.raises(CompareError, match='does not exist'):
        read_variants(str(tmp_path / 'none.py'))
    shipped = read_variants(str(REPO / 'docs' / 'results' / 'ablation_demo'
                                / 'variants.py'))
    assert 'retrain_9ep' in shipped and 'no_weight_sharing' in shipped


def test_summary_is_mean_and_sample_std_over_seeds():
    runs = [dict(method='a', seed=s, top1=t, branches=10, step_time=st)
            for s, t, st in ((0, 80.0, 0.1), (1, 82.0, 0.3), (2, 84.0, 0.2))]
    row = summarize(runs, ['a', 'b'])
    assert list(row) == ['a']
    assert row['a']['top1_mean'] == 82.0 and row['a']['top1_std'] == 2.0
    assert row['a']['step_time'] == 0.2 and row['a']['seeds'] == [0, 1, 2]


@pytest.mark.slow
def test_tiny_comparison_resumes_and_its_table_matches_its_logs(
        tiny_comparison, tmp_path):
    work, first, second = tiny_comparison
    assert '3 of 6 runs finished; run again to continue' in first.stdout
    # Seed by seed: the first three runs were every method of seed 0.
    assert 'run 5/6: random, seed 1' in second.stdout
    assert 'run 6/6: repnas-no_noise, seed 1' in second.stdout
    assert 'run 1/6' not in second.stdout  # finished runs are reused
    assert '6 of 6 runs finished' in second.stdout
    results = json.loads((work / 'results.json').read_text())
    assert len(results['runs']) == 6
    for run in results['runs']:
        run_dir = work / 'runs' / run['method'] / f'seed_{run["seed"]}'
        # The table's number is the one tools/test.py logged for the fused
        # network, and the fused network scores what training validated.
        logged = json.loads(next((run_dir / 'test').glob('*/*.json'))
                            .read_text())
        assert run['top1'] == logged['accuracy/top1']
        assert run['top1'] == pytest.approx(run['top1_last_val'], abs=1e-4)
        assert run['branches'] == 22 and run['fused_error'] <= 1e-4
        assert (run_dir / 'train.log').is_file()
    table = (work / 'results.md').read_text()
    # The variant ran with its option (a noise-free search).
    assert 'noise=False' in (work / 'runs' / 'repnas-no_noise' / 'seed_0' /
                             'config.py').read_text()
    for method in ('repnas', 'random', 'repnas-no_noise'):
        top1 = [r['top1'] for r in results['runs'] if r['method'] == method]
        assert (f'| {method} | {statistics.mean(top1):.2f} ± '
                f'{statistics.stdev(top1):.2f} | 2 | 22 |') in table
    png = (work / 'results.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    # results.json says how to re-run it: the command and what each method
    # changes (no per-run config copy is needed to rebuild the runs).
    assert results['command'].startswith(
        'python tools/compare_architectures.py ')
    assert results['methods']['repnas-no_noise']['changes'] == dict(
        search=True, options={'custom_hooks.0.noise': False})
    assert results['methods']['random']['changes']['search'] is False
    # Published as evidence: portable, without configs or checkpoints.
    out = tmp_path / 'published'
    # The work dir and the variants file live outside the repository:
    # their folder is mapped to a relative one.
    published = run_tool('tools/publish_results.py', work, out, '--alias',
                         f'{work.parent}=work_dirs/study')
    assert published.returncode == 0, published.stderr
    assert not list(out.rglob('config.py')) and not list(out.rglob('*.pth'))
    assert sorted(p.name for p in (out / 'runs' / 'random' / 'seed_0')
                  .iterdir()) == ['random_arch.json', 'result.json',
                                  'train.log']
    for path in out.rglob('*'):
        if path.is_file() and path.suffix != '.png':
            assert not machine_paths(path.read_text(), this_machine()), path
