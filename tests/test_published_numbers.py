"""Every number README.md and docs/ quote from a study is the one its
committed result file holds (docs/results/): the formatted text must appear
in the document. A re-run that changes a result makes this fail until the
document quotes the new number."""
import json
import statistics

import pytest

from .conftest import REPO

RESULTS = REPO / 'docs' / 'results'


def _json(path):
    return json.loads((RESULTS / path).read_text())


def _methods(study):
    return _json(f'{study}/results.json')['methods']


def _run(study, method, seed):
    return _json(f'{study}/runs/{method}/seed_{seed}/result.json')


def _pm(row, digits=2):
    """'mean ± std' of a compare row, as the docs write it."""
    return f'{row["top1_mean"]:.{digits}f} ± {row["top1_std"]:.{digits}f}'


def _pair(values, digits=2):
    mean, std = values
    return f'{mean:.{digits}f} ± {std:.{digits}f}'


def demo_summary_lines():
    """The summary `make demo` printed, line by line, as README shows it."""
    summary = _json('demo/summary.json')
    width = max(len(k) for k in summary)
    return [f'{key:<{width}} : {value}' for key, value in summary.items()
            if not isinstance(value, dict)]


def claims():
    """(document, text it must contain), each made from a result file."""
    out = []
    # The demo: the summary block, and the headline numbers from it.
    for line in demo_summary_lines():
        out.append(('README.md', line))
    # The demo's default against its controls, 3 seeds, held-out test split.
    default = _methods('default_demo')
    for doc in ('README.md', 'docs/ablation.md'):
        for method in ('repnas', 'searched', 'repvgg', 'repnas-one_stage'):
            out.append((doc, _pm(default[method])))
        out.append((doc, _pm(_methods('default_demo_repvgg_9ep')['repvgg'])))
    # The comparisons on the CIFAR-10 subset (3 seeds) and on all of
    # Fashion-MNIST (2 seeds), held-out test splits, and their equal-epoch
    # gap (the default minus the one-stage run): means, and per seed.
    for study in ('compare_cifar10_subset', 'compare_fmnist_full'):
        rows = _methods(study)
        for method in ('repnas', 'repnas-one_stage', 'searched', 'random',
                       'plain', 'repvgg'):
            out += [('README.md', _pm(rows[method])),
                    ('docs/compare.md', _pm(rows[method]))]
        for method in ('acb', 'dbb', 'full'):
            out.append(('docs/compare.md', _pm(rows[method])))
        for method in ('repnas', 'repnas-one_stage'):
            out.append(('docs/ablation.md', _pm(rows[method])))
        gap = rows['repnas']['top1_mean'] - rows['repnas-one_stage']['top1_mean']
        out += [('docs/compare.md', f'by {gap:.1f} points'),
                ('README.md', f'{gap:.1f} points above the')]
        per_seed = [_run(study, 'repnas', s)['top1']
                    - _run(study, 'repnas-one_stage', s)['top1']
                    for s in rows['repnas']['seeds']]
        out.append(('docs/ablation.md', ' / '.join(
            f'{d:+.1f}'.replace('-', '−') for d in per_seed)))
    # Search cost (tools/benchmark_search.py), 224 px.
    ratios = _json('online_benchmark/benchmark_search_cpu_b8.json')['ratios']
    out += [('README.md', f'{ratios["search"]["step_ratio"]:.2f}× / '
             f'{ratios["search online"]["step_ratio"]:.2f}×'),
            ('README.md', f'{ratios["full"]["step_ratio"]:.2f}× / '
             f'{ratios["full online"]["step_ratio"]:.2f}×; '
             f'{ratios["full online"]["saved_ratio"]:.2f}×')]
    # INT8 speed and the forms' drops.
    lat = _json('int8_latency/latency_int8.json')['results']
    out.append(('README.md', f'{lat["1"]["int8"]["speedup"]:.2f}× / '
                f'{lat["8"]["int8"]["speedup"]:.2f}×'))
    drops = {name: _json(f'{name}/int8.json')['forms']
             for name in ('int8_demo', 'int8_cifar10_subset')}
    out.append(('README.md',
                f'{_pair(drops["int8_demo"]["quant_friendly"]["drop"])} / '
                f'{_pair(drops["int8_demo"]["standard"]["drop"])}; '
                f'{_pair(drops["int8_cifar10_subset"]["quant_friendly"]["drop"])}'
                f' / {_pair(drops["int8_cifar10_subset"]["standard"]["drop"])}'
                .replace('-', '−')))
    # What each INT8 step buys (tools/benchmark_int8.py steps), 3 seeds.
    steps = {name: _json(f'{name}/int8_steps.json')['methods']
             for name in ('int8_steps_demo_detector',
                          'int8_steps_cifar10_subset')}
    det, cls = steps['int8_steps_demo_detector'], \
        steps['int8_steps_cifar10_subset']
    for rows in (det, cls):
        for row in rows.values():  # the tables of docs/int8.md
            out.append(('docs/int8.md', _pair(row['drop'])))
    readme = [det['standard PTQ'], det['standard PTQ + fallback'],
              det['quant-friendly PTQ'], det['quant-friendly PTQ + fallback'],
              det['QAT'], cls['standard PTQ'], cls['QAT']]
    out += [('README.md', _pair(row['drop']).replace('-', '−'))
            for row in readme]
    out.append(('README.md', f'{det["QAT"]["speedup"]["1"]:.2f}× / '
                f'{det["QAT"]["speedup"]["8"]:.2f}×'))
    # RefConv.
    demo_gain = _json('refconv_demo/refconv.json')['summary']['gain']
    cifar_gain = _json('refconv_resnet18_cifar10_subset/refconv.json')[
        'summary']['gain']
    out.append(('README.md', f'{_pair(demo_gain)}; {_pair(cifar_gain)}'
                .replace('-', '−')))
    cost = _json('refconv_resnet18_cifar10_subset/refconv_cost.json')
    saved = cost['memory']['refconv']['saved_mib'] / \
        cost['memory']['baseline']['saved_mib']
    out.append(('README.md', f'{cost["step_ratio"]:.2f}×; {saved:.2f}×'))
    # The fusion sweep.
    sweep = _json('fusion_sweep/fusion_sweep.json')
    counts = {}
    for row in sweep['rows']:
        counts[row['status']] = counts.get(row['status'], 0) + 1
    out.append(('README.md', f'{counts["exact"]} exact'))
    # Latency and fusion benchmarks of A0 (this CPU).
    latency = _json('latency_a0/latency.json')['results']
    training = next(v for k, v in latency.items() if 'training-time' in k)
    speedup = training['ms_per_batch'] / latency['fused']['ms_per_batch']
    out.append(('README.md', f'{speedup:.1f}× faster'))
    fusion = _json('fusion_a0/fusion.json')['presets']
    low = min(p['fused_over_repvgg'] for p in fusion)
    high = max(p['fused_over_repvgg'] for p in fusion)
    out.append(('README.md', f'{low:.2f}-{high:.2f}×'))
    # The width search: what a step costs, and the latency table's check.
    cost = _json('width_search_cost/search_cost.json')
    steps = cost['step_seconds']
    ratio = statistics.median(w / s for w, s in zip(steps['search widths'],
                                                    steps['search']))
    saved = cost['memory']['search widths']['saved_mib'] / \
        cost['memory']['search']['saved_mib']
    for doc in ('README.md', 'docs/widths.md',
                'docs/results/width_search_cost/README.md'):
        out.append((doc, f'{ratio:.2f}x'))
    out.append(('docs/widths.md', f'saves {saved:.2f}x the bytes'))
    for run in ('check_run1.txt', 'check_run2.txt',
                'check_calibrated_run1.txt', 'check_calibrated_run2.txt'):
        lines = (RESULTS / 'latency_table_a0' / run).read_text().splitlines()
        if 'calibrated' in run:  # the checks after the fit
            lines = lines[next(i for i, line in enumerate(lines)
                               if 'calibrated:' in line) + 1:]
        for line in lines:
            if line.startswith('[latency table] widths'):
                measured = line.split('measured ')[1].split(' ms')[0]
                ratio = line.rsplit('= ', 1)[1]
                for doc in ('docs/widths.md',
                            'docs/results/latency_table_a0/README.md'):
                    out.append((doc, ratio))
                    if 'calibrated' not in run:
                        out.append((doc, f'{float(measured):.2f}'))
    # The width study (tools/benchmark_widths.py): top-1, latency, goals.
    for study in ('width_study_cifar10_subset', 'width_study_fmnist_full'):
        rows = _methods(study)
        for label, row in rows.items():
            cells = (f'| {label} | ', f'| {_pm(row)} | '
                     f'{row["predicted_ms"]:.3f} | {row["ms_b1"]:.3f} | '
                     f'{row["speedup_b1"]:.2f}x | {row["ms_b8"]:.3f} | '
                     f'{row["speedup_b8"]:.2f}x |')
            out += [('docs/widths.md', cell) for cell in cells]
            out.append((f'docs/results/{study}/results.md', _pm(row)))
        for label in ('uniform-1', 'uniform-0.5', 'search-0.5', 'random-0.5'):
            out.append(('README.md', f'| {_pm(rows[label])} |'))
        for doc in ('README.md', 'docs/widths.md'):
            out.append((doc, f'{rows["search-0.5"]["vs_budget_b1"]:.3f}x'))
    cifar = _methods('width_study_cifar10_subset')
    for doc in ('README.md', 'docs/widths.md'):
        out.append((doc, f'{cifar["search-0.75"]["vs_budget_b1"]:.3f}x'))
    blind = _methods('width_study_cifar10_subset_score_only')
    for label in ('search-0.75', 'search-0.5'):
        out += [(doc, _pm(blind[label])) for doc in ('README.md',
                                                     'docs/widths.md')]
        out.append(('docs/widths.md',
                    f'{blind[label]["vs_budget_b1"]:.3f}x its measured'
                    if label == 'search-0.75' else
                    f'at {blind[label]["vs_budget_b1"]:.3f}x;'))
    worst = max(abs(r['predicted_vs_measured'] - 1) for r in blind.values())
    out.append(('docs/widths.md', f'within {worst:.1%} of measured'))
    for study, worst in (('width_study_cifar10_subset', '12.8%'),
                         ('width_study_fmnist_full', '4.7%')):
        rows = _methods(study).values()
        got = max(abs(r['predicted_vs_measured'] - 1) for r in rows)
        assert f'{got:.1%}' == worst, (study, got)
        out += [('README.md', worst), ('docs/widths.md', worst)]
    # The Ray engine against the sequential one (tools/benchmark_engines.py).
    engines = _json('engines_demo/engines.json')
    assert engines['identical_at_same_threads'] is True
    for doc in ('README.md', 'docs/compare.md'):
        out.append((doc, f'{engines["speedup_median"]:.2f}x'))
    return out


@pytest.mark.parametrize('doc,text', claims(),
                         ids=lambda v: str(v)[:40])
def test_quoted_number_is_the_committed_one(doc, text):
    assert text in (REPO / doc).read_text(), (
        f'{doc} does not quote {text!r} (from docs/results/)')


def test_the_published_studies_are_their_runs():
    """Each study's table is the mean and sample std of its runs'
    result.json, and says the command that made it."""
    for path in sorted(RESULTS.glob('**/results.json')):
        study = json.loads(path.read_text())
        assert study.get('command', '').startswith('python tools/'), path
        for method, row in study['methods'].items():
            runs = [json.loads((path.parent / 'runs' / method /
                                f'seed_{s}' / 'result.json').read_text())
                    for s in row['seeds']]
            top1 = [r['top1'] for r in runs]
            assert row['top1_mean'] == pytest.approx(statistics.mean(top1))
            if len(top1) > 1:
                assert row['top1_std'] == pytest.approx(
                    statistics.stdev(top1))
