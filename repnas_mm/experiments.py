"""What the tools share: run one of them, read what it wrote (layer 3).

``tools/compare_architectures.py``, ``tools/demo.py`` and the benchmarks
chain the project's tools. They run each as ``python -m repnas_mm.tools.
<name>`` (the installed package, never a path into a checkout), log its
output, and read its results from the files mmengine writes: the scalars of
training (``<stamp>/vis_data/scalars.json``), the metrics of a test
(``<stamp>/<stamp>.json``) and the last checkpoint (``last_checkpoint``).
"""
import ctypes
import glob
import json
import os.path as osp
import signal
import subprocess
import sys
from typing import Callable, List, Optional, Sequence

from repnas_mm.errors import UserError


class ToolError(UserError):
    """A tool run by another one failed, or wrote nothing to read."""


class ToolKilled(ToolError):
    """A tool run by another one was killed by a signal (SIGKILL by the
    kernel's OOM killer, a scheduler or a user): it did not fail by itself,
    and running it again (resuming) may succeed."""


def _prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _prctl()  # loaded here: the forked child must not load libraries
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a child before its exec: be killed when the parent dies, so a
    training never outlives (and never races) the process that started it
    (a killed comparison or Ray worker, which is then run again)."""
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def tool_command(name: str, *args) -> List[str]:
    """The command line that runs ``tools/<name>.py`` with ``args``."""
    return [sys.executable, '-m', f'repnas_mm.tools.{name}',
            *(str(a) for a in args)]


def run_logged(cmd: Sequence, log_path: str,
               echo: Optional[Callable[[str], bool]] = None) -> None:
    """Run ``cmd``, its output appended to ``log_path`` (after the command
    itself); lines for which ``echo`` is true are also printed. Raises
    :class:`ToolError` naming the log when it fails (:class:`ToolKilled`
    when a signal ended it). The tool dies with this process."""
    cmd = [str(c) for c in cmd]
    with open(log_path, 'a') as log:
        log.write(f'$ {" ".join(cmd)}\n')
        log.flush()
        # A tool's stray non-UTF-8 bytes must not end the run that logs it.
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors='replace', bufsize=1,
            preexec_fn=_die_with_parent if _PRCTL is not None else None)
        for line in proc.stdout:
            log.write(line)
            if echo is not None and echo(line):
                sys.stdout.write(line)
                sys.stdout.flush()
        returncode = proc.wait()
    if returncode < 0:
        try:
            killer = signal.Signals(-returncode).name
        except ValueError:
            killer = f'signal {-returncode}'
        raise ToolKilled(f'{_name(cmd)} was killed by {killer}; log: '
                         f'{log_path}')
    if returncode != 0:
        raise ToolError(f'{_name(cmd)} failed (exit {returncode}); log: '
                        f'{log_path}')


def _name(cmd: Sequence[str]) -> str:
    for arg in cmd:  # python -m [torch.distributed.run ... -m] repnas_mm...
        if arg.startswith('repnas_mm.tools.'):
            return arg.rpartition('.')[2]
    if len(cmd) > 2 and cmd[1] == '-m':
        return cmd[2].rpartition('.')[2]
    return osp.basename(cmd[1]) if len(cmd) > 1 else cmd[0]


def last_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint mmengine saved last in ``work_dir`` (None: none)."""
    path = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


def read_scalars(work_dir: str, latest_only: bool = False) -> List[dict]:
    """Every record of ``<stamp>/vis_data/scalars.json`` in ``work_dir``,
    runs in time order (a resumed training has several); ``latest_only``:
    the last run's alone."""
    paths = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                      'scalars.json')))
    records = []
    for path in paths[-1:] if latest_only else paths:
        with open(path) as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


def read_test_metrics(test_dir: str) -> dict:
    """The metrics ``tools/test.py`` wrote in ``test_dir`` (the latest)."""
    found = sorted(glob.glob(osp.join(test_dir, '*', '*.json')))
    if not found:
        raise ToolError(f'tools/test.py wrote no metrics in {test_dir}')
    with open(found[-1]) as f:
        return json.load(f)


__all__ = ['ToolError', 'ToolKilled', 'last_checkpoint', 'read_scalars',
           'read_test_metrics', 'run_logged', 'tool_command']
