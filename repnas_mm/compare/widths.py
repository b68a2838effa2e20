"""The width study (issue 32): uniform widths, the latency search and random
widths at the same budgets, each network's measured latency beside its
accuracy.

For a width-search config (``RepNASHook(widths=dict(table=...))``) and
width multipliers ``m`` (0.5, 0.75, 1.0 by default), every method keeps the
config's branch search and schedule and differs only in its widths:

- ``uniform-<m>``: every layer ``m`` times its width (a multiple of the
  layer's step, never below its floor), fixed from the start;
- ``search-<m>``: the width search under the budget of ``uniform-<m>``: its
  predicted latency on the config's table (below 1.0 only: at full width
  the budget admits only the full network);
- ``random-<m>``: per seed, every layer's width drawn at random from its
  steps until the network's predicted latency lies in [0.9, 1] of that
  budget (below 1.0 only, as the search).

After the runs, every shipped network (the fused classifier, built from its
deploy config) is exported to ONNX and timed in ONNX Runtime round-robin,
at the table's input size and at batch 1 and 8; the report pairs each with
``uniform-1.0`` and with the uniform network of its budget repeat by
repeat. See ``tools/benchmark_widths.py`` and docs/widths.md.
"""
import copy
import json
import os.path as osp
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from repnas_mm.atomic import atomic_path
from repnas_mm.config import follow_backbone_widths

from .methods import CompareError, _search_hook, method_config

MULTIPLIERS = (0.5, 0.75, 1.0)


def width_space(cfg, budget_ratio: float = 1.0):
    """A :class:`~repnas_mm.search.width_space.WidthSpace` of the config's
    backbone and latency table (its steps, floors and predictions)."""
    from repnas_mm.deploy.model import build_model_unchecked
    from repnas_mm.search.width_space import WidthSpace
    widths = _search_hook(cfg).get('widths')
    if not widths:
        raise CompareError(f'{cfg.filename}: the width study needs a width '
                           'search config (RepNASHook(widths=dict(table=...'
                           ')))')
    model_cfg = copy.deepcopy(cfg)
    model_cfg.model.backbone.init_cfg = None
    return WidthSpace.from_config(build_model_unchecked(model_cfg),
                                  dict(widths), budget_ratio=budget_ratio,
                                  noise=False)


def uniform_widths(space, multiplier: float) -> List[int]:
    """Every layer ``multiplier`` times its width, rounded to its step and
    kept between its floor and its width."""
    return [min(full, max(floor, round(full * multiplier / step) * step))
            for full, step, floor in zip(space.full, space.steps,
                                         space.floors)]


def random_widths(space, budget_ms: float, seed: int,
                  low: float = 0.9, tries: int = 100000) -> List[int]:
    """Every layer's width drawn uniformly from its steps (floor to full)
    until the predicted latency lies in ``[low, 1] * budget_ms``."""
    gen = torch.Generator().manual_seed(seed)
    choices = [list(range(floor, full + 1, step)) + (
        [full] if (full - floor) % step else [])
        for full, step, floor in zip(space.full, space.steps, space.floors)]
    for _ in range(tries):
        widths = [c[int(torch.randint(len(c), (1, ), generator=gen))]
                  for c in choices]
        if low * budget_ms <= space.predicted_ms(widths) <= budget_ms:
            return widths
    raise CompareError(f'no random widths within [{low:g}, 1] x '
                       f'{budget_ms:.3f} ms in {tries} draws')


def _fixed_widths(cfg, widths: Sequence[int], full: Sequence[int]):
    """The config without the width search, built at ``widths`` (the head
    reads the last width)."""
    out = copy.deepcopy(cfg)
    _search_hook(out).pop('widths')
    if list(widths) == list(full):
        return out  # the full network, as the branch search builds it
    out.model.backbone.widths = list(widths)
    follow_backbone_widths(out.model)
    return out


def study_methods(cfg, space, multipliers: Sequence[float] = MULTIPLIERS
                  ) -> Dict[str, dict]:
    """label -> dict(make=make_config(seed, run_dir), multiplier,
    budget_ms, changes) of every method of the study."""
    methods = {}
    for m in sorted(multipliers, reverse=True):
        widths = uniform_widths(space, m)
        budget = space.predicted_ms(widths)
        uniform = _fixed_widths(cfg, widths, space.full)
        methods[f'uniform-{m:g}'] = dict(
            make=_maker(uniform), multiplier=m, budget_ms=budget,
            changes=dict(widths=widths, search='branches only'))
        if widths == list(space.full):
            continue
        search = copy.deepcopy(cfg)
        hook = _search_hook(search)
        hook['widths'] = {k: v for k, v in hook['widths'].items()
                          if k not in ('budget_ratio', 'budget_ms')}
        hook['widths']['budget_ms'] = budget
        methods[f'search-{m:g}'] = dict(
            make=_maker(search), multiplier=m, budget_ms=budget,
            changes=dict(search='branches and widths', budget_ms=budget))
        methods[f'random-{m:g}'] = dict(
            make=_random_maker(cfg, space, budget), multiplier=m,
            budget_ms=budget,
            changes=dict(widths='a seeded draw per seed (random_widths)',
                         budget_ms=budget, search='branches only'))
    return methods


def _maker(cfg) -> Callable[[int, str], object]:
    return lambda seed, run_dir: method_config(cfg, 'repnas', seed, run_dir)


def _random_maker(cfg, space, budget_ms: float):
    def make(seed, run_dir):
        widths = random_widths(space, budget_ms, seed)
        return method_config(_fixed_widths(cfg, widths, space.full),
                             'repnas', seed, run_dir)
    return make


# -- latency of the shipped networks ----------------------------------------
def shipped_classifier(deploy_config: str) -> torch.nn.Module:
    """The fused classifier of a deploy config as mmdeploy exports it (its
    tensor output): backbone, neck and head."""
    from mmengine.config import Config

    from repnas_mm.deploy.model import build_model_unchecked
    from repnas_mm.deploy.onnx import TensorOutputs
    return TensorOutputs(build_model_unchecked(
        Config.fromfile(deploy_config))).eval()


def measure_latency(runs: Sequence[dict], space, batches=(1, 8),
                    repeats: int = 15, min_seconds: float = 0.1,
                    log: Callable[[str], None] = print) -> dict:
    """Every distinct shipped network of ``runs`` timed in ONNX Runtime,
    round-robin: every round loads each network in turn (one session alive
    at a time: the idle threads of another would compete for the cores),
    warms it up and times calls for about ``min_seconds``. ``{batch:
    {widths key: [s per call, per round]}}``, and each network's predicted
    milliseconds (``'predicted'``)."""
    import tempfile

    from repnas_mm.deploy.latency_table import export_static, ort_runner
    key = timing_key(space)
    nets = {}
    for run in runs:
        name = widths_key(run['widths'] or space.full)
        if name not in nets:
            nets[name] = shipped_classifier(run['fused_config'])
    out = dict(predicted={name: space.predicted_ms(_widths(name))
                          for name in nets})
    channels = space.backbone.stem.conv.in_channels
    with tempfile.TemporaryDirectory() as folder:
        for batch in batches:
            torch.manual_seed(0)
            example = torch.randn(batch, channels, space.input_size,
                                  space.input_size)
            paths = {name: export_static(net, example, osp.join(
                folder, f'{name}_b{batch}.onnx'))
                for name, net in nets.items()}
            log(f'[width study] timing {len(paths)} networks at batch '
                f'{batch}, {repeats} rounds')
            iters, times = {}, {name: [] for name in paths}
            for _ in range(repeats):
                for name, path in paths.items():
                    run = ort_runner(path, example, key)
                    for _ in range(3):
                        run()
                    if name not in iters:
                        start = time.perf_counter()
                        run()
                        once = max(time.perf_counter() - start, 1e-6)
                        iters[name] = max(3, int(min_seconds / once))
                    start = time.perf_counter()
                    for _ in range(iters[name]):
                        run()
                    times[name].append(
                        (time.perf_counter() - start) / iters[name])
                    del run
            out[batch] = times
    return out


def timing_key(space) -> dict:
    """The runtime the table measured (ONNX Runtime on the CPU, all its
    threads, for a table that timed nothing)."""
    from repnas_mm.deploy.latency_table import runtime_key
    key = dict(space.table.key)
    return key if 'provider' in key else runtime_key('cpu')


def widths_key(widths: Sequence[int]) -> str:
    return '-'.join(map(str, widths))


def _widths(key: str) -> List[int]:
    return [int(w) for w in key.split('-')]


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over repeats of ``a / b`` (timed back to back)."""
    return statistics.median(x / y for x, y in zip(a, b))


# -- the report --------------------------------------------------------------
def summarize(runs: Sequence[dict], methods: Dict[str, dict], latency: dict,
              space) -> Dict[str, dict]:
    """Per method: top-1 mean ± std, widths, predicted and measured
    latency (median of each seed's network), paired ratios."""
    from repnas_mm.benchmark import mean_std
    full = widths_key(space.full)
    rows = {}
    batches = [b for b in latency if b != 'predicted']
    for label, method in methods.items():
        mine = [r for r in runs if r['method'] == label]
        if not mine:
            continue
        names = [widths_key(r['widths'] or space.full) for r in mine]
        uniform = widths_key(uniform_widths(space, method['multiplier']))
        mean, std = mean_std(r['top1'] for r in mine)
        row = dict(multiplier=method['multiplier'],
                   budget_ms=method['budget_ms'], seeds=[r['seed']
                                                          for r in mine],
                   top1=[r['top1'] for r in mine], top1_mean=mean,
                   top1_std=std, widths=[_widths(n) for n in names],
                   train_seconds=[r['train_seconds'] for r in mine],
                   predicted_ms=statistics.mean(
                       latency['predicted'][n] for n in names))
        for b in batches:
            t = latency[b]
            row[f'ms_b{b}'] = statistics.mean(
                1e3 * statistics.median(t[n]) for n in names)
            row[f'speedup_b{b}'] = statistics.mean(
                paired_ratio(t[full], t[n]) for n in names)
            row[f'vs_budget_b{b}'] = statistics.mean(
                paired_ratio(t[n], t[uniform]) for n in names)
            row[f'spread_b{b}'] = max(
                (max(t[n]) - min(t[n])) / statistics.median(t[n])
                for n in names)
            # The least disturbed round of each: on a shared machine whose
            # neighbours come and go, the rounds are not one population.
            row[f'min_ms_b{b}'] = statistics.mean(1e3 * min(t[n])
                                                  for n in names)
            row[f'min_speedup_b{b}'] = statistics.mean(
                min(t[full]) / min(t[n]) for n in names)
            row[f'min_vs_budget_b{b}'] = statistics.mean(
                min(t[n]) / min(t[uniform]) for n in names)
        b1 = batches[0]
        row['predicted_vs_measured'] = statistics.mean(
            latency['predicted'][n] / (1e3 * statistics.median(latency[b1][n]))
            for n in names)
        row['predicted_vs_min'] = statistics.mean(
            latency['predicted'][n] / (1e3 * min(latency[b1][n]))
            for n in names)
        rows[label] = row
    return rows


def goals(rows: Dict[str, dict]) -> List[str]:
    """The issue's goals, each a line saying met or not, with its numbers."""
    lines = []
    full = rows.get('uniform-1')
    gains = []
    for label, row in rows.items():
        if not label.startswith('search-'):
            continue
        m = row['multiplier']
        uniform = rows.get(f'uniform-{m:g}')
        if uniform is None:
            continue
        gain = row['top1_mean'] - uniform['top1_mean']
        gains.append(gain)
        lines.append(
            f'- budget {m:g}x: search {row["top1_mean"]:.2f} vs uniform '
            f'{uniform["top1_mean"]:.2f} ({gain:+.2f}): '
            + ('at least as accurate' if gain >= 0 else 'less accurate')
            + '; measured latency of the uniform network\'s (paired median; '
            'of the least disturbed rounds): '
            + ', '.join(f'batch {b} {row[f"vs_budget_b{b}"]:.3f}x / '
                        f'{row[f"min_vs_budget_b{b}"]:.3f}x'
                        for b in _batches(row))
            + ': ' + ('within' if row['vs_budget_b1'] <= 1.05 else 'over')
            + ' 1.05x at batch 1')
        if full is not None:
            matches = row['top1_mean'] >= full['top1_mean'] - full['top1_std']
            lines.append(
                f'  - vs full width: {row["top1_mean"]:.2f} vs '
                f'{full["top1_mean"]:.2f} ± {full["top1_std"]:.2f} at '
                f'{row["speedup_b1"]:.2f}x lower latency (batch 1): '
                + ('matches it' if matches else 'does not match it')
                + (' at >= 1.5x' if row['speedup_b1'] >= 1.5 else
                   ' at < 1.5x'))
    if gains:
        lines.append(
            '- search at least as accurate as uniform at every budget: '
            + ('yes' if min(gains) >= 0 else 'no')
            + '; >= 1.0 better at one budget or more: '
            + ('yes' if max(gains) >= 1.0 else 'no'))
    errors = [abs(r['predicted_vs_measured'] - 1) for r in rows.values()]
    if errors:
        quiet = max(abs(r['predicted_vs_min'] - 1) for r in rows.values())
        lines.append(
            f'- predicted within 10% of measured (batch 1): worst '
            f'{max(errors):.1%} off the median, {quiet:.1%} off the least '
            'disturbed round: ' + ('yes' if max(errors) <= 0.1 else 'no'))
    return lines


def _batches(row: dict) -> List[int]:
    return [int(k[len('vs_budget_b'):]) for k in row
            if k.startswith('vs_budget_b')]


def write_report(work_dir: str, study: dict, rows: Dict[str, dict],
                 latency: dict, batches: Sequence[int]) -> dict:
    """results.json, results.md and accuracy_latency.png in ``work_dir``."""
    summary = dict(study, methods=rows,
                   latency={str(k): v for k, v in latency.items()})
    with atomic_path(osp.join(work_dir, 'results.json')) as tmp:
        with open(tmp, 'w') as f:
            json.dump(summary, f, indent=2)
    cols = ''.join(f' ms b{b} | speed-up b{b} |' for b in batches)
    cols_min = ''.join(f' min ms b{b} | min speed-up b{b} |' for b in batches)
    lines = [
        f'Width study on `{study["config"]}`, seeds '
        f'{", ".join(map(str, study["seeds"]))}: top-1 of the fused network '
        'on the test set (mean ± sample std over seeds); latency of the '
        f'shipped network in ONNX Runtime ({study["runtime"]}) at '
        f'{study["input_size"]} px, median of {study["repeats"]} round-robin '
        'repeats, mean over seeds; speed-up: full width / this network, '
        'paired repeat by repeat. The min columns: the least disturbed '
        'round of each network.', '',
        f'Command: `{study["command"]}`', '',
        '| method | widths (seed 0) | top-1 (%) | predicted ms |' + cols
        + cols_min + ' train (s) |',
        '|---|---|---|---|' + '---|---|' * 2 * len(batches) + '---|']
    for label, row in rows.items():
        cells = ''.join(f' {row[f"ms_b{b}"]:.3f} | '
                        f'{row[f"speedup_b{b}"]:.2f}x |' for b in batches)
        cells += ''.join(f' {row[f"min_ms_b{b}"]:.3f} | '
                         f'{row[f"min_speedup_b{b}"]:.2f}x |'
                         for b in batches)
        train = [t for t in row['train_seconds'] if t is not None]
        lines.append(
            f'| {label} | {widths_key(row["widths"][0])} | '
            f'{row["top1_mean"]:.2f} ± {row["top1_std"]:.2f} | '
            f'{row["predicted_ms"]:.3f} |{cells} '
            + (f'{statistics.mean(train):.0f}' if train else 'n/a') + ' |')
    lines += ['', 'Goals (issue 32):', ''] + goals(rows)
    with atomic_path(osp.join(work_dir, 'results.md')) as tmp:
        with open(tmp, 'w') as f:
            f.write('\n'.join(lines) + '\n')
    _figure(rows, batches, osp.join(work_dir, 'accuracy_latency.png'),
            study['config'])
    return summary


def _figure(rows, batches, path, title):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4),
                             squeeze=False)
    styles = {'uniform': ('s', 'k'), 'search': ('o', 'C3'),
              'random': ('^', 'C0')}
    for ax, b in zip(axes[0], batches):
        for kind, (marker, color) in styles.items():
            mine = sorted((r[f'ms_b{b}'], r['top1_mean'], r['top1_std'],
                           r['multiplier'])
                          for label, r in rows.items()
                          if label.split('-')[0] == kind)
            if not mine:
                continue
            x, y, e, m = zip(*mine)
            ax.errorbar(x, y, yerr=e, fmt=marker + '-', color=color,
                        capsize=3, label=kind)
            for xi, yi, mi in zip(x, y, m):  # the budget each point had
                ax.annotate(f'{mi:g}x', (xi, yi), textcoords='offset points',
                            xytext=(4, 4), fontsize=7, color=color)
        ax.set_xlabel(f'ONNX Runtime latency, batch {b} (ms)')
        ax.set_ylabel('fused top-1 (%), mean ± std')
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix='.png') as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def width_study(config: str, work_dir: str,
                multipliers: Sequence[float] = MULTIPLIERS,
                seeds: Sequence[int] = (0, 1, 2),
                batches: Sequence[int] = (1, 8),
                cfg_options: Optional[dict] = None,
                max_runs: Optional[int] = None,
                repeats: int = 15,
                log: Callable[[str], None] = print,
                command: Optional[str] = None,
                engine=None) -> Optional[dict]:
    """Run (or continue) the study; measure and report it once every run
    has finished (None before). ``engine``: where the runs train
    (:class:`.engines.GridEngine`; default: one after another here)."""
    from repnas_mm.config import read_config

    from .running import _relative, run_grid
    cfg = read_config(config, cfg_options)
    cfg.pop('work_dir', None)
    space = width_space(cfg)
    methods = study_methods(cfg, space, multipliers)
    for label, m in methods.items():
        log(f'[width study] {label}: budget {m["budget_ms"]:.3f} ms '
            f'predicted; {m["changes"]}')
    runs = run_grid({k: m['make'] for k, m in methods.items()}, seeds,
                    work_dir, max_runs, log, engine=engine)
    if len(runs) < len(methods) * len(seeds):
        return None
    latency = measure_latency(runs, space, batches, repeats, log=log)
    rows = summarize(runs, methods, latency, space)
    study = dict(config=_relative(config), command=command, seeds=list(seeds),
                 cfg_options=dict(cfg_options or {}),
                 input_size=space.input_size, repeats=repeats,
                 runtime=', '.join(f'{k} {v}' for k, v in
                                   timing_key(space).items()
                                   if k != 'batch'),
                 changes={k: m['changes'] for k, m in methods.items()},
                 runs=list(runs))
    summary = write_report(work_dir, study, rows, latency, batches)
    space.table.save(osp.join(work_dir, 'latency_table.json'))  # evidence
    for line in goals(rows):
        log('[width study] ' + line)
    return summary

