"""The INT8 ladder: what each step buys, on one task, over seeds.

For each seed, the config is trained twice (standard blocks, and
``form='quant_friendly'``), the standard network is fine-tuned
quantization-aware (the QAT config, from its checkpoint), and five INT8
models are deployed with ``tools/deploy.py --int8``'s function:

- ``standard PTQ``: the standard network, calibrated;
- ``standard PTQ + fallback``: the same, its most sensitive layers kept
  fp32 (the sensitivity pass);
- ``quant-friendly PTQ``: the quantization-friendly one, calibrated;
- ``quant-friendly PTQ + fallback``: the same, its most sensitive layers
  kept fp32 (the sensitivity pass);
- ``QAT``: the quantization-aware fine-tune, with its trained scales.

Each INT8 model's drop is measured against the fp32 network it came from as
a user trained it (QAT: the standard network before the fine-tune), on the
config's test split. Then the fp32 export and the INT8 models of the
first seed are timed side by side in ONNX Runtime at a deployment size.
Finished steps are reused when run again.
"""
import json
import os
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from repnas_mm.atomic import atomic_path
from repnas_mm.benchmark import markdown_table, mean_std, write_report
from repnas_mm.experiments import last_checkpoint, run_logged, tool_command

#: The trained networks, in training order (QAT starts from the standard one).
TRAINED = ('standard', 'quant_friendly', 'qat')
#: The INT8 models: name -> (trained network, fp32 reference, fp32 layers?).
METHODS = {
    'standard PTQ': ('standard', 'standard', False),
    'standard PTQ + fallback': ('standard', 'standard', True),
    'quant-friendly PTQ': ('quant_friendly', 'quant_friendly', False),
    'quant-friendly PTQ + fallback': ('quant_friendly', 'quant_friendly',
                                      True),
    'QAT': ('qat', 'standard', False),
}


def _options(options: Optional[dict]) -> List[str]:
    return [f'{k}={v}' for k, v in (options or {}).items()]


def train(config: str, work_dir: str, options: dict, log_path: str) -> str:
    """``tools/train.py config`` (resumed if interrupted); its last
    checkpoint."""
    os.makedirs(work_dir, exist_ok=True)
    resume = last_checkpoint(work_dir) is not None
    if not (resume and osp.isfile(osp.join(work_dir, 'done'))):
        run_logged(tool_command('train', config, '--work-dir', work_dir,
                                *(['--resume'] if resume else []),
                                '--cfg-options', *_options(options)),
                   log_path)
        open(osp.join(work_dir, 'done'), 'w').close()
    return last_checkpoint(work_dir)


def run_seed(config: str, qat_config: str, work_dir: str, seed: int,
             cfg_options: dict, qf_options: dict, calib_images: int,
             fp32_layers: int, log: Callable[[str], None] = print) -> dict:
    """Train and deploy every step of one seed; ``{method: int8 result}``."""
    from repnas_mm.deploy import Int8Options, VerifyOptions, deploy
    base = dict(cfg_options or {}, **{'randomness.seed': seed})
    runs = {
        'standard': (config, base),
        'quant_friendly': (config, dict(base, **{
            'model.backbone.form': 'quant_friendly'}, **(qf_options or {}))),
    }
    seed_dir = osp.join(work_dir, 'runs', f'seed_{seed}')
    checkpoints = {}
    for name in TRAINED:
        if name == 'qat':
            runs['qat'] = (qat_config,
                           dict(base, load_from=checkpoints['standard']))
        cfg, options = runs[name]
        log(f'[int8] seed {seed}: training {name}')
        checkpoints[name] = train(cfg, osp.join(seed_dir, name), options,
                                  osp.join(seed_dir, f'{name}.log'))
    results = {}
    for method, (trained, _, fallback) in METHODS.items():
        folder = osp.join(seed_dir, 'deploy', method.replace(' ', '_')
                          .replace('+', 'and'))
        path = folder + '.json'
        if not osp.isfile(path):
            log(f'[int8] seed {seed}: deploying {method}')
            cfg, options = runs[trained]
            os.makedirs(osp.dirname(folder), exist_ok=True)
            with open(folder + '.log', 'w') as f:
                result = deploy(
                    cfg, checkpoints[trained], folder,
                    VerifyOptions(num_images=2),
                    int8=Int8Options(100.0, calib_images, 'minmax',
                                     fp32_layers if fallback else 0),
                    cfg_options={k: v for k, v in options.items()
                                 if k != 'load_from'},
                    log=lambda line: f.write(line + '\n'))
            found = dict(result['int8'])
            for key in ('sdk_dir', 'onnx'):  # evidence: relative paths
                found[key] = osp.relpath(found[key])
            with atomic_path(path) as tmp, open(tmp, 'w') as f:
                json.dump(dict(seed=seed, **found), f, indent=2)
        with open(path) as f:
            results[method] = json.load(f)
    return results


def time_methods(runs: Dict[str, dict], size: int, batches: Sequence[int],
                 repeats: int) -> Dict[int, dict]:
    """The fp32 export and each method's INT8 model of one seed, timed
    side by side in ONNX Runtime on random ``size`` x ``size`` inputs."""
    from repnas_mm.deploy.int8 import time_models
    first = runs['standard PTQ']
    paths = {'fp32': osp.join(osp.dirname(first['sdk_dir']), 'end2end.onnx')}
    for method, result in runs.items():
        paths[method] = result['onnx']
    rng = np.random.default_rng(0)
    timed = {}
    for batch in batches:
        example = rng.standard_normal((batch, 3, size, size),
                                      dtype=np.float32)
        timed[batch] = time_models(paths, example, repeats)
    return timed


def summarize(per_seed: Dict[int, Dict[str, dict]], timed, size: int,
              context: dict) -> tuple:
    """(report, data) of the finished seeds."""
    seeds = sorted(per_seed)
    label = per_seed[seeds[0]]['standard PTQ']['metric_label']
    rows, summary = [], {}
    for method, (_, reference, _) in METHODS.items():
        ref_method = next(m for m, v in METHODS.items()
                          if v[0] == reference and not v[2])
        fp32 = [per_seed[s][ref_method]['fp32'] for s in seeds]
        int8 = [per_seed[s][method]['int8'] for s in seeds]
        drops = [f - i for f, i in zip(fp32, int8)]
        kept = per_seed[seeds[0]][method].get('kept_fp32') or []
        summary[method] = dict(
            fp32=mean_std(fp32), int8=mean_std(int8), drop=mean_std(drops),
            drops=drops, kept_fp32=kept,
            speedup={str(b): timed[b][method]['speedup'] for b in timed})
        row = [method, reference.replace('_', '-'),
               '%.2f ± %.2f' % summary[method]['fp32'],
               '%.2f ± %.2f' % summary[method]['int8'],
               '%.2f ± %.2f' % summary[method]['drop'],
               ', '.join(f'{d:.2f}' for d in drops)]
        row += [f'{timed[b][method]["speedup"]:.2f}x' for b in timed]
        rows.append(row)
    table = markdown_table(
        ['INT8 model', 'from (fp32)', f'fp32 {label}', f'INT8 {label}',
         'drop (points)', f'drop per seed ({", ".join(map(str, seeds))})']
        + [f'speed vs fp32, {size} px, batch {b}' for b in timed], rows)
    times = markdown_table(
        ['model'] + [f'ms, batch {b}' for b in timed],
        [[name] + [f'{timed[b][name]["ms"]:.2f}' for b in timed]
         for name in timed[next(iter(timed))]])
    report = (
        f'`{context["config"]}` (QAT: `{context["qat_config"]}`), seeds '
        f'{", ".join(map(str, seeds))}, mean ± sample std; every INT8 model '
        'evaluated on the config\'s held-out test split with its own '
        f'metric; PTQ calibrated on {context["calib_images"]} training '
        f'images (minmax); the fallback keeps {context["fp32_layers"]} '
        'layer(s) fp32. Drop: against the fp32 network the INT8 model came '
        'from as trained (QAT: the standard network before its '
        'fine-tune).\n\n' + table + '\n\nSpeed: ONNX Runtime CPU, '
        f'{context["threads"]} threads, random {size} x {size} inputs, the '
        'first seed\'s models timed round-robin (median of the per-repeat '
        'ratios to fp32); milliseconds per call:\n\n' + times + '\n')
    data = dict(context, seeds=seeds, methods=summary,
                runs={str(s): per_seed[s] for s in seeds},
                latency={str(b): t for b, t in timed.items()})
    return report, data


def run_study(config: str, qat_config: str, work_dir: str,
              seeds: Sequence[int], cfg_options: Optional[dict] = None,
              qf_options: Optional[dict] = None, calib_images: int = 64,
              fp32_layers: int = 2, time_size: int = 512,
              time_batches: Sequence[int] = (1, 8), repeats: int = 10,
              command: Optional[str] = None,
              log: Callable[[str], None] = print) -> dict:
    """Run (or continue) the study; write ``work_dir/int8_steps.{md,json}``
    and return its data."""
    import torch
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = run_seed(config, qat_config, work_dir, seed,
                                  cfg_options or {}, qf_options or {},
                                  calib_images, fp32_layers, log)
    log(f'[int8] timing at {time_size} px, batches {list(time_batches)}')
    timed = time_methods(per_seed[seeds[0]], time_size, time_batches,
                         repeats)
    context = dict(config=config, qat_config=qat_config, command=command,
                   cfg_options=cfg_options or {}, qf_options=qf_options or {},
                   calib_images=calib_images, fp32_layers=fp32_layers,
                   time_size=time_size, threads=torch.get_num_threads())
    report, data = summarize(per_seed, timed, time_size, context)
    write_report(work_dir, 'int8_steps', report, data, 'int8')
    return data


__all__ = ['METHODS', 'run_study', 'summarize']
