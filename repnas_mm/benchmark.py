"""Side-by-side throughput measurement (CPU or CUDA).

Models are timed round-robin: every repeat runs each model once in turn, so
machine noise (other jobs, clock changes) hits all of them alike; results
are medians over repeats. On CUDA every timing is bracketed by
``torch.cuda.synchronize()`` and preceded by warm-up iterations.
"""
import contextlib
import json
import os
import os.path as osp
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import torch


@dataclass
class Timing:
    """Seconds per batch of every repeat, for one model."""
    name: str
    batch_size: int
    seconds: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def images_per_second(self) -> float:
        return self.batch_size / self.median

    @property
    def spread(self) -> float:
        """(max - min) / median over repeats: how noisy the machine was."""
        return (max(self.seconds) - min(self.seconds)) / self.median


def paired_speedup(faster: Timing, slower: Timing) -> float:
    """Median over repeats of ``slower / faster`` seconds, repeat by repeat.

    Both were timed in the same repeat, back to back, so the ratio cancels
    drift that a ratio of two medians keeps.
    """
    return statistics.median(
        s / f for f, s in zip(faster.seconds, slower.seconds))


def sync(device):
    """Wait for the device's queued work (CUDA); nothing to wait for on CPU."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def describe_device(device) -> str:
    """What a timing ran on: the GPU's name, or the CPU and its threads."""
    if torch.device(device).type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU, {torch.get_num_threads()} threads'


def time_round_robin(runs: Dict[str, Callable[[], object]],
                     batch_size: int,
                     device='cpu',
                     repeats: int = 5,
                     iters: int = 3,
                     warmup: int = 2,
                     progress: bool = True,
                     inference: bool = True) -> Dict[str, Timing]:
    """Time every ``runs[name]()`` (one batch each); medians per repeat.

    Each repeat times ``iters`` consecutive calls of each model and records
    the mean seconds per call. ``inference=False`` for training steps (no
    ``torch.inference_mode``).
    """
    timings = {name: Timing(name, batch_size) for name in runs}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(
            total=len(runs) * (repeats + 1), desc='timing', unit='run')
    with torch.inference_mode(inference):
        for name, run in runs.items():  # warm-up (allocator, cuDNN, caches)
            for _ in range(warmup):
                run()
            sync(device)
            if bar:
                bar.update()
        for _ in range(repeats):
            for name, run in runs.items():
                sync(device)
                start = time.perf_counter()
                for _ in range(iters):
                    run()
                sync(device)
                timings[name].seconds.append(
                    (time.perf_counter() - start) / iters)
                if bar:
                    bar.set_postfix_str(name)
                    bar.update()
    if bar:
        bar.close()
    return timings


def cuda_peak_mib(run: Callable[[], object], device,
                  inference: bool = True) -> float:
    """MiB that one ``run()`` adds at its peak on a CUDA ``device``
    (``torch.cuda.max_memory_allocated`` above what was allocated before;
    ``inference=False`` for a training step)."""
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode(inference):
        run()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def mean_std(values) -> tuple:
    """(mean, sample std) of ``values``; the std of one value is 0."""
    values = list(values)
    return (statistics.mean(values),
            statistics.stdev(values) if len(values) > 1 else 0.0)


def write_report(folder: str, name: str, report: str, data: dict,
                 tag: str = 'benchmark'):
    """``folder/name.md`` (``report``) and ``folder/name.json`` (``data``),
    each written whole; the report is printed too."""
    from repnas_mm.atomic import atomic_path
    os.makedirs(folder, exist_ok=True)
    with atomic_path(osp.join(folder, f'{name}.md')) as tmp:
        with open(tmp, 'w') as f:
            f.write(report)
    with atomic_path(osp.join(folder, f'{name}.json')) as tmp:
        with open(tmp, 'w') as f:
            json.dump(data, f, indent=2)
    print(report)
    print(f'[{tag}] wrote {osp.join(folder, name)}.md and .json')


def markdown_table(headers: List[str], rows: List[List[object]]) -> str:
    """A GitHub Markdown table."""
    lines = ['| ' + ' | '.join(headers) + ' |',
             '|' + '|'.join('---' for _ in headers) + '|']
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def _status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def reset_peak_rss():
    """Reset the process's peak RSS to its current RSS; return it (KiB).

    Linux's /proc/self/clear_refs accepts 5 for that; elsewhere the peak
    cannot be reset and ru_maxrss (peak since start) is the best we have.
    """
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return _status_kib('VmRSS')
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_kib():
    try:
        return _status_kib('VmHWM')
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class SavedBytes:
    """Bytes of the distinct storages autograd saved for backward, but
    those of ``exclude`` (tensors that exist anyway, e.g. parameters)."""

    def __init__(self, exclude=()):
        self._storages = {}
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._exclude:
            self._storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def nbytes(self) -> int:
        return sum(self._storages.values())


@contextlib.contextmanager
def saved_for_backward(exclude=()):
    """Count what autograd saves for backward inside the block (exact:
    each storage once, however many tensors view it), but the storages of
    the tensors in ``exclude``."""
    saved = SavedBytes(exclude)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        yield saved
