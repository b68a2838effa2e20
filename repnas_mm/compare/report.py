"""The report of a comparison: results.json, results.md and results.png,
rebuilt from the runs' own result files. See :mod:`repnas_mm.compare`."""
import json
import os.path as osp
import statistics
from typing import Dict, Sequence

from repnas_mm.atomic import atomic_path


def summarize(runs: Sequence[dict], methods: Sequence[str]) -> Dict:
    """Mean and sample std over seeds of each method's numbers."""
    rows = {}
    for method in methods:
        mine = [r for r in runs if r['method'] == method]
        if not mine:
            continue
        top1 = [r['top1'] for r in mine]
        rows[method] = dict(
            seeds=[r['seed'] for r in mine],
            top1_mean=statistics.mean(top1),
            top1_std=statistics.stdev(top1) if len(top1) > 1 else 0.0,
            branches_mean=statistics.mean(r['branches'] for r in mine),
            step_time=statistics.median(r['step_time'] for r in mine))
    return rows


def write_tables(runs, work_dir, study, methods, seeds) -> dict:
    """results.json, results.md and results.png from the runs' results.

    ``study``: the config's path (or a dict with ``config`` and, as
    :func:`compare` records them, ``command``, ``cfg_options`` and each
    method's ``changes``).
    """
    study = study if isinstance(study, dict) else dict(config=study)
    config = study['config']
    rows = summarize(runs, methods)
    for method, row in rows.items():
        if method in study.get('changes', {}):
            row['changes'] = study['changes'][method]
    base = rows.get('plain', {}).get('step_time')
    summary = dict(study, seeds=list(seeds), methods=rows, runs=list(runs))
    with atomic_path(osp.join(work_dir, 'results.json')) as tmp:
        with open(tmp, 'w') as f:
            json.dump(summary, f, indent=2)
    lines = [
        f'Comparison on `{config}`, seeds {", ".join(map(str, seeds))}: '
        'top-1 of the fused network on the test set (mean ± sample std over '
        'seeds), branches kept, median training step time.', '']
    if study.get('command'):
        lines += [f'Command: `{study["command"]}`', '']
    lines += [
        '| method | top-1 (%) | runs | branches | step (s) | step vs plain |',
        '|---|---|---|---|---|---|'
    ]
    for method, row in rows.items():
        ratio = f'{row["step_time"] / base:.2f}x' if base else 'n/a'
        lines.append(
            f'| {method} | {row["top1_mean"]:.2f} ± {row["top1_std"]:.2f} '
            f'| {len(row["seeds"])} | {row["branches_mean"]:.0f} '
            f'| {row["step_time"]:.4f} | {ratio} |')
    with atomic_path(osp.join(work_dir, 'results.md')) as tmp:
        with open(tmp, 'w') as f:
            f.write('\n'.join(lines) + '\n')
    if rows:
        _figure(rows, osp.join(work_dir, 'results.png'))
    return summary


def _figure(rows: dict, path: str):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, row in rows.items():
        ax.errorbar(row['step_time'], row['top1_mean'], yerr=row['top1_std'],
                    fmt='o', capsize=3, label=method)
        ax.annotate(method, (row['step_time'], row['top1_mean']),
                    textcoords='offset points', xytext=(5, 5), fontsize=8)
    ax.set_xlabel('median training step time (s)')
    ax.set_ylabel('fused top-1 (%), mean ± std over seeds')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix='.png') as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
