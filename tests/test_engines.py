"""Where a grid's runs execute (repnas_mm/compare/engines.py): sequentially or on Ray.

Ray's scheduling is tested with runs that only wait; the slow tests run real tiny
trainings through a Ray cluster that the test starts (`ray start --head`) and on a
local Ray whose worker the test kills in the middle of a training, and compare them
with the sequential engine's runs.
"""
import json
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest
import torch

import repnas_mm  # noqa: F401
from repnas_mm.compare import CompareError, GridEngine
from repnas_mm.compare.engines import (GridProgress, GridRun, _claim_cores,
                                       _connection_error, pinned, run_lock,
                                       run_runs, train_command)
from repnas_mm.experiments import ToolError, ToolKilled, run_logged

from . import fake_runs
from .conftest import REPO, free_port, run_tool, tiny_grid_args

PAUSABLE_CFG = REPO / 'tests' / 'configs' / 'odbb_cls_cifar10_tiny_pausable.py'
# The fields of a result that do not depend on when and where it ran.
SAME = ('method', 'seed', 'top1', 'top1_last_val', 'branches', 'fused_error',
        'widths')


def test_engine_options_are_checked():
    assert GridEngine().kind == 'sequential'
    with pytest.raises(CompareError, match='unknown engine'):
        GridEngine('dask')
    with pytest.raises(CompareError, match='use it with --engine ray'):
        GridEngine(address='auto')
    with pytest.raises(CompareError, match='at least 1'):
        GridEngine('ray', cpus_per_run=0)


def test_several_gpus_train_with_torchrun():
    one = train_command('c.py', 'w', resume=True, gpus=1)
    assert one[1:] == ['-m', 'repnas_mm.tools.train', 'c.py', '--work-dir',
                       'w', '--resume']
    four = train_command('c.py', 'w', resume=False, gpus=4)
    assert four[1:6] == ['-m', 'torch.distributed.run', '--standalone',
                         '--nproc-per-node=4', '-m']
    assert four[6:] == ['repnas_mm.tools.train', 'c.py', '--work-dir', 'w',
                        '--launcher', 'pytorch']


def test_a_killed_tool_is_told_from_a_failed_one(tmp_path):
    log = tmp_path / 'log'
    with pytest.raises(ToolKilled, match='killed by SIGKILL'):
        run_logged([sys.executable, '-c', 'import os, signal; '
                    'os.kill(os.getpid(), signal.SIGKILL)'], log)
    with pytest.raises(ToolError, match=r'failed \(exit 3\)') as failed:
        run_logged([sys.executable, '-c', 'raise SystemExit(3)'], log)
    assert not isinstance(failed.value, ToolKilled)  # Ray retries only kills


def _children(pid):
    path = f'/proc/{pid}/task/{pid}/children'
    with open(path) as f:
        return [int(p) for p in f.read().split()]


def _alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().split(') ')[1][0] != 'Z'
    except FileNotFoundError:
        return False


def test_a_tool_dies_with_the_process_that_ran_it(tmp_path):
    """A killed comparison (or Ray worker) leaves no training behind that
    would race the run's retry in the same folder."""
    log = tmp_path / 'log'
    parent = subprocess.Popen([sys.executable, '-c', (
        'from repnas_mm.experiments import run_logged; '
        f'run_logged(["sleep", "300"], {str(log)!r})')], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not _children(parent.pid):
            assert time.monotonic() < deadline, 'run_logged started nothing'
            time.sleep(0.05)
        child, = _children(parent.pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, 'the tool outlived its parent'
            time.sleep(0.05)
    finally:
        parent.kill()


def test_pinned_gives_threads_and_free_cores_and_restores(tmp_path,
                                                          monkeypatch):
    monkeypatch.setattr('tempfile.tempdir', str(tmp_path))  # the core locks
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    cores, threads = os.sched_getaffinity(0), torch.get_num_threads()
    with pinned(1, gpus=0):
        assert os.environ['OMP_NUM_THREADS'] == '1'
        assert os.environ['CUDA_VISIBLE_DEVICES'] == ''
        assert torch.get_num_threads() == 1
        mine = os.sched_getaffinity(0)
        assert len(mine) == 1 if len(cores) > 1 else mine == cores
        # A second run on this machine (another process) gets another core.
        other = subprocess.run(
            [sys.executable, '-c', 'import os; from repnas_mm.compare.engines '
             'import pinned\nwith pinned(1): print(*os.sched_getaffinity(0))'],
            env=dict(os.environ, TMPDIR=str(tmp_path)), capture_output=True,
            text=True, check=True,  # with every core, as a Ray worker starts
            preexec_fn=lambda: os.sched_setaffinity(0, cores)).stdout.split()
        if len(cores) > 1:
            assert len(other) == 1 and int(other[0]) not in mine
    assert 'OMP_NUM_THREADS' not in os.environ
    assert os.environ.get('CUDA_VISIBLE_DEVICES') != ''
    assert os.sched_getaffinity(0) == cores
    assert torch.get_num_threads() == threads
    # Cores are claimed one lock each, until none is free.
    claims = [_claim_cores(1) for _ in cores]
    held = [c for got, _ in claims for c in got]
    assert len(held) == len(set(held)) == (len(cores) if len(cores) > 1
                                           else 0)


def test_a_cluster_that_wants_a_token_is_one_line():
    # What ray.init raises for a cluster started with token authentication
    # (Ray's default) when the driver sends none: the reason is only in the
    # text of a cause (measured with Ray 2.60 and `ray start --head`).
    try:
        try:
            raise RuntimeError('Failed to connect to GCS. Last connection '
                               'error: ... Unauthenticated: RPC error: '
                               'InvalidAuthToken: Authentication token is '
                               'missing or incorrect')
        except RuntimeError as e:
            raise ConnectionError('Failed to connect to Ray cluster at '
                                  '10.0.0.1:6379') from e
    except ConnectionError as e:
        error = _connection_error('10.0.0.1:6379', e)
    assert str(error).startswith('the Ray cluster at 10.0.0.1:6379 wants its '
                                 'token: set RAY_AUTH_MODE=token here')
    assert str(_connection_error('h:1', ConnectionError('refused'))) == \
        'no Ray cluster at h:1: refused'


def test_a_run_is_held_by_one_process(tmp_path):
    with run_lock(str(tmp_path)):
        with pytest.raises(CompareError, match='being run by another'):
            with run_lock(str(tmp_path)):
                pass
    with run_lock(str(tmp_path)):  # released
        pass


def test_progress_says_runs_done_and_eta():
    lines = []
    progress = GridProgress(total=6, finished=2, to_run=3, log=lines.append)
    progress.slots = 2  # two runs at once
    runs = [GridRun(label, 1, 'd', i) for i, label in
            enumerate(('repnas', 'random', 'plain'), start=3)]
    for run in runs[:2]:
        progress.started(run)
    assert lines[-1] == '[compare] run 5/6: random, seed 1 (d)'
    progress.start -= 40
    progress.started_at[3] -= 30  # the first run took 30 s
    result = dict(top1=81.25, branches=22, step_time=0.05)
    progress.done(runs[0], result)
    # Two runs left, a run takes 30 s, two at once: 30 s.
    assert lines[-1] == ('[compare] repnas seed 1: fused top-1 81.25, 22 '
                         'branches, step 0.0500 s; 3/6 runs done in 40 s, '
                         'ETA 30 s')
    progress.done(runs[1], result)
    progress.started(runs[2])
    progress.done(runs[2], result)
    # --max-runs left one run for later: no ETA once these are done.
    assert lines[-1].endswith('5/6 runs done in 40 s')


# ----------------------------------------------------------------------------
# Ray's scheduling, with runs that only wait (tests/fake_runs.py)


def _fake_grid(tmp_path, labels, needs=None):
    """Run fake runs (seed 0) on local Ray, a CPU each: the labels of the
    runs that finished, in order, and the progress lines."""
    runs = [GridRun(label, 0, str(tmp_path / label), i)
            for i, label in enumerate(labels)]
    done, lines = [], []
    run_runs(GridEngine('ray', cpus_per_run=1), runs, needs or {},
             lambda run: os.makedirs(run.run_dir), fake_runs.execute,
             lambda run, result: done.append(run.label),
             GridProgress(len(runs), 0, len(runs), lines.append))
    return done, lines


def _times(tmp_path, label):
    return json.loads((tmp_path / label / 'times.json').read_text())


@pytest.mark.slow  # starts Ray (a few seconds)
def test_ray_starts_runs_in_order_after_the_runs_they_need(tmp_path):
    # 'slow-0' needs 'slow-1.5' (as searched needs repnas); 'slow-0.2' needs
    # nothing and runs beside it.
    done, lines = _fake_grid(tmp_path, ['slow-1.5', 'slow-0', 'slow-0.2'],
                             needs={'slow-0': ['slow-1.5']})
    slots = min(2, len(os.sched_getaffinity(0)))
    assert f'CPU(s), 0 GPU(s): {slots} at once' in lines[0]
    assert sorted(done) == ['slow-0', 'slow-0.2', 'slow-1.5']
    search, searched = _times(tmp_path, 'slow-1.5'), _times(tmp_path, 'slow-0')
    assert searched['start'] >= search['end']
    if slots == 2:
        assert _times(tmp_path, 'slow-0.2')['start'] < search['end']
        assert done == ['slow-0.2', 'slow-1.5', 'slow-0']
    assert lines[-1].startswith('[compare] slow-0 seed 0: fused top-1 50.00, '
                                '1 branches, step 0.1000 s; 3/3 runs done')


@pytest.mark.slow  # starts Ray (a few seconds)
def test_a_failed_ray_run_stops_the_grid_once_the_others_finish(tmp_path):
    with pytest.raises(ToolError, match=r'^train failed \(exit 1\); log: '):
        _fake_grid(tmp_path, ['broken', 'slow-3', 'slow-0'])
    # With two CPUs the slow run was under way: it finished. The last run
    # had not started; it never does.
    two = len(os.sched_getaffinity(0)) > 1
    assert (tmp_path / 'slow-3' / 'times.json').exists() == two
    assert not (tmp_path / 'slow-0').exists()


# ----------------------------------------------------------------------------
# Real grids: tiny trainings, compared with the sequential engine's runs of
# the same config (conftest.tiny_comparison: repnas, seeds 0 and 1, a
# thread a run)


def _rows(work):
    runs = json.loads((work / 'results.json').read_text())['runs']
    return {(r['method'], r['seed']): r for r in runs}


def _same(row, reference):
    assert {k: row[k] for k in SAME} == {k: reference[k] for k in SAME}
    for key in ('checkpoint', 'fused_checkpoint', 'fused_config'):
        assert row[key].split('/runs/')[1] == \
            reference[key].split('/runs/')[1]
    # The same thread count trains the same network, bit for bit.
    ours, theirs = (torch.load(_path(r['fused_checkpoint']),
                               weights_only=True)['state_dict']
                    for r in (row, reference))
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        assert torch.equal(value, theirs[name]), name


def _path(path):
    return path if os.path.isabs(path) else REPO / path


def _env(**extra):
    # tests.pause (a config's custom import) must import in every process.
    return dict(PYTHONPATH=str(REPO), **extra)


@pytest.fixture
def ray_head(tmp_path):
    """A one-node Ray cluster on 127.0.0.1 (token authentication, as `ray
    start` sets it up), stopped after: its address and environment."""
    port = free_port()
    env = dict(os.environ, **_env(RAY_AUTH_MODE='token',
                                  RAY_AUTH_TOKEN=secrets.token_hex(32)))
    log = tmp_path / 'ray_head.log'
    head = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), 'ray'), 'start',
         '--head', '--block', '--node-ip-address', '127.0.0.1', '--port',
         str(port), '--num-cpus', '2', '--num-gpus', '0',
         '--include-dashboard', 'false', '--disable-usage-stats'],
        stdout=open(log, 'w'), stderr=subprocess.STDOUT, env=env,
        cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while 'Ray runtime started' not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, \
                log.read_text()[-3000:]
            time.sleep(0.2)
        yield f'127.0.0.1:{port}', env
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # ray start and what it started
        head.wait()


@pytest.mark.slow
def test_a_grid_on_a_ray_cluster_gives_the_sequential_results(
        tmp_path, tiny_comparison, ray_head):
    address, env = ray_head
    work = tmp_path / 'ray'
    out = run_tool(*tiny_grid_args(work, '--methods', 'repnas', '--seeds',
                                   '0', '1', '--engine', 'ray', '--address',
                                   address), env=env).stdout
    assert '[compare] Ray: 1 node(s), 2 CPUs, 0 GPUs; each run 1 CPU(s), ' \
        '0 GPU(s): 2 at once' in out
    assert '2 of 2 runs finished' in out
    rows, reference = _rows(work), _rows(tiny_comparison[0])
    assert list(rows) == [('repnas', 0), ('repnas', 1)]
    for key, row in rows.items():
        _same(row, reference[key])


def _process_running(config):
    """(pid, parent pid) of the training of ``config``."""
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                cmd = f.read().split(b'\0')
            with open(f'/proc/{pid}/stat') as f:
                ppid = int(f.read().split(') ')[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if b'repnas_mm.tools.train' in cmd and str(config).encode() in cmd:
            return int(pid), ppid
    return None


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_a_failed_run_ends_the_grid(
        tmp_path, tiny_comparison):
    """Local Ray, two runs at once: the search, which holds after epoch 1
    of 2 (tests/pause.py) until the test kills its Ray worker, and a
    variant that fails by itself."""
    work, held = tmp_path / 'ray', tmp_path / 'held'
    variants = tmp_path / 'variants.py'
    variants.write_text("variants = dict(broken={'model.backbone.no_such_"
                        "option': 1})\n")
    args = list(map(str, tiny_grid_args(
        work, '--methods', 'repnas', '--seeds', '0', '--variants', variants,
        '--engine', 'ray', options=[f'custom_hooks.1.marker={held}'])))
    args[1] = str(PAUSABLE_CFG)
    tool = subprocess.Popen([sys.executable, *args], cwd=REPO,
                            env=dict(os.environ, **_env()),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 300
        while not held.exists():
            assert tool.poll() is None, tool.stdout.read()[-3000:]
            assert time.monotonic() < deadline, 'the run never held'
            time.sleep(0.1)
        run_dir = work / 'runs' / 'repnas' / 'seed_0'
        training, worker = _process_running(run_dir / 'config.py')
        with open(f'/proc/{worker}/cmdline', 'rb') as f:
            assert f.read().startswith(b'ray::grid_run_task')  # a Ray worker
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(training):
            assert time.monotonic() < deadline, 'the training outlived it'
            time.sleep(0.05)
        out, _ = tool.communicate(timeout=600)
    finally:
        tool.kill()
    # The broken run ended the grid, once the search under way had finished.
    broken = work / 'runs' / 'repnas-broken' / 'seed_0' / 'train.log'
    assert tool.returncode == 1, out[-3000:]
    assert f'[compare] repnas-broken seed 0 failed: train failed (exit 1); ' \
        f'log: {broken}' in out
    assert out.rstrip().endswith(f'error: train failed (exit 1); log: '
                                 f'{broken}')
    assert '[compare] repnas seed 0: fused top-1' in out
    assert '1 of 2 runs finished; run again to continue' in out
    # Ray ran the killed task again; it resumed from the checkpoint of epoch 1.
    log = (run_dir / 'train.log').read_text()
    trains = [line for line in log.splitlines() if line.startswith('$ ')]
    assert len(trains) == 2 and trains[1].endswith(' --resume')
    assert 'resumed' in log.split(trains[1])[1].lower()
    rows = _rows(work)
    assert list(rows) == [('repnas', 0)]
    _same(rows[('repnas', 0)], _rows(tiny_comparison[0])[('repnas', 0)])
    assert rows[('repnas', 0)]['train_seconds'] is None  # resumed: no clean time
