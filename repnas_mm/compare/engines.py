"""Where a grid's runs execute: one after another here, or on Ray.

A grid (:func:`repnas_mm.compare.run_grid`) is a list of runs, each a
folder that :func:`~repnas_mm.compare.running.execute_run` trains, fuses,
verifies and evaluates through the project's tools. An engine only decides
where and when each run executes:

- ``sequential`` (the default): one run at a time, in this process;
- ``ray``: every run is a Ray task (``num_cpus=cpus_per_run``,
  ``num_gpus=gpus_per_run``), as many at once as the cluster's resources
  allow. Without ``address`` Ray starts on this machine; with one
  (``auto``, ``HOST:PORT``) the grid joins a running cluster, whose nodes
  must see the work dir at the same path (a shared file system).

Ray starts the runs that others need first (``searched`` needs the
``repnas`` run of its seed), then the rest in grid order. Either way a
run's result is its ``result.json``. A finished run is
reused; a run whose training dies (its Ray worker killed, the training
process killed by a signal) is retried by Ray (``max_retries``) and resumes
from its last checkpoint; a grid whose driver died continues when it is
run again. Runs that need another run's result start once that run has
finished.

Each run pins its threads to its CPUs (:func:`pinned`), in both engines: a
run of ``cpus_per_run=n`` trains with ``n`` threads (``OMP_NUM_THREADS``,
``torch.set_num_threads``) on ``n`` cores that no other run of this machine
holds, so two runs of the same grid never share a core.
"""
import contextlib
import fcntl
import os
import os.path as osp
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

from repnas_mm.experiments import ToolError, ToolKilled, tool_command

from .methods import CompareError

ENGINES = ('sequential', 'ray')
THREAD_VARIABLES = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS',
                    'OPENBLAS_NUM_THREADS')


@dataclass(frozen=True)
class GridEngine:
    """How a grid runs. ``cpus_per_run``: threads (and cores) of each run
    (None: the sequential engine leaves them to torch, Ray gives 1);
    ``gpus_per_run``: GPUs of each run (None: the sequential engine uses
    what is visible, Ray gives 1 when the cluster has GPUs, else 0; more
    than 1 trains with torchrun, one process per GPU); ``address``: the Ray
    cluster to join (None: start Ray on this machine); ``max_retries``: how
    often Ray runs a run again whose worker or training was killed."""
    kind: str = 'sequential'
    address: Optional[str] = None
    cpus_per_run: Optional[int] = None
    gpus_per_run: Optional[int] = None
    max_retries: int = 3

    def __post_init__(self):
        if self.kind not in ENGINES:
            raise CompareError(f'unknown engine {self.kind!r}; engines are '
                               f'{", ".join(ENGINES)}')
        if self.address is not None and self.kind != 'ray':
            raise CompareError('--address joins a Ray cluster: use it with '
                               '--engine ray')
        if self.cpus_per_run is not None and self.cpus_per_run < 1:
            raise CompareError('--cpus-per-run must be at least 1')
        if self.gpus_per_run is not None and self.gpus_per_run < 0:
            raise CompareError('--gpus-per-run must be 0 or more')


class GridRun(NamedTuple):
    """One run of a grid: ``index`` is its place in the grid (0-based)."""
    label: str
    seed: int
    run_dir: str
    index: int


def add_engine_args(parser) -> None:
    """The engine options of a tool that runs a grid."""
    group = parser.add_argument_group(
        'engine', 'where the runs execute (docs/compare.md#engines)')
    group.add_argument('--engine', choices=ENGINES, default='sequential',
                       help='sequential (default): one run at a time here; '
                       'ray: every run a Ray task, as many at once as the '
                       'resources allow')
    group.add_argument('--address', default=None,
                       help='with --engine ray: the cluster to join (auto, '
                       'HOST:PORT); without it Ray starts on this machine')
    group.add_argument('--cpus-per-run', type=int, default=None,
                       help='threads and cores of each run (Ray default: 1)')
    group.add_argument('--gpus-per-run', type=int, default=None,
                       help='GPUs of each run (Ray default: 1 on a cluster '
                       'with GPUs); more than 1 trains with torchrun')


def engine_from_args(args) -> GridEngine:
    return GridEngine(args.engine, args.address, args.cpus_per_run,
                      args.gpus_per_run)


# ----------------------------------------------------------------------------
# One run's resources


def train_command(cfg_path: str, train_dir: str, resume: bool,
                  gpus: Optional[int] = None) -> List[str]:
    """The command that trains one run: ``tools/train.py``, or torchrun
    with one process per GPU when ``gpus`` > 1."""
    args = [cfg_path, '--work-dir', train_dir,
            *(['--resume'] if resume else [])]
    if gpus is not None and gpus > 1:
        return [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                f'--nproc-per-node={gpus}', '-m', 'repnas_mm.tools.train',
                *args, '--launcher', 'pytorch']
    return tool_command('train', *args)


def _claim_cores(n: int) -> tuple:
    """``n`` of this process's cores that no other run on this machine holds
    (an exclusive ``flock`` each, released when the holder closes it or
    dies): (cores, lock fds), or ((), ()) when there are not ``n`` free."""
    allowed = sorted(os.sched_getaffinity(0))
    if n >= len(allowed):
        return (), ()
    lock_dir = osp.join(tempfile.gettempdir(), 'repnas_mm-cores')
    cores, fds = [], []
    try:
        os.makedirs(lock_dir, exist_ok=True)
        for core in allowed:
            fd = os.open(osp.join(lock_dir, f'cpu{core}.lock'),
                         os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            cores.append(core)
            fds.append(fd)
            if len(cores) == n:
                return tuple(cores), tuple(fds)
    except OSError:  # no usable temporary folder: threads alone
        pass
    for fd in fds:
        os.close(fd)
    return (), ()


@contextlib.contextmanager
def pinned(cpus: Optional[int], gpus: Optional[int] = None):
    """Within: this process and the tools it starts use ``cpus`` threads (per
    training process when torchrun starts ``gpus`` of them), on ``cpus``
    cores of their own where this machine has them free; ``gpus=0`` hides
    the GPUs. Everything is restored after."""
    import torch
    saved_env = {k: os.environ.get(k)
                 for k in THREAD_VARIABLES + ('CUDA_VISIBLE_DEVICES',)}
    saved_threads = torch.get_num_threads()
    saved_cores = os.sched_getaffinity(0)
    fds = ()
    try:
        if gpus == 0:
            os.environ['CUDA_VISIBLE_DEVICES'] = ''
        if cpus is not None:
            per_process = max(1, cpus // max(1, gpus or 1))
            for name in THREAD_VARIABLES:
                os.environ[name] = str(per_process)
            torch.set_num_threads(cpus)
            cores, fds = _claim_cores(cpus)
            if cores:
                os.sched_setaffinity(0, cores)
        yield
    finally:
        for fd in fds:
            os.close(fd)
        os.sched_setaffinity(0, saved_cores)
        torch.set_num_threads(saved_threads)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def run_lock(run_dir: str):
    """Hold ``run_dir`` for this process: a second process (a second
    invocation of the same grid, a retried Ray task whose first worker is
    still alive) gets a one-line error instead of training beside it."""
    fd = os.open(osp.join(run_dir, '.lock'), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CompareError(f'{run_dir} is being run by another process; '
                               'wait for it or stop it') from None
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------
# Progress


class GridProgress:
    """One line per started and per finished run, with the grid's progress
    and an ETA: the mean wall time of the runs finished now, times the runs
    still to run, over the runs that run at once (``slots``)."""

    def __init__(self, total: int, finished: int, to_run: int,
                 log: Callable[[str], None]):
        self.total, self.finished, self.to_run = total, finished, to_run
        self.log, self.start, self.slots = log, time.monotonic(), 1
        self.started_at, self.durations = {}, []

    def started(self, run: GridRun) -> None:
        self.started_at[run.index] = time.monotonic()
        self.log(f'[compare] run {run.index + 1}/{self.total}: {run.label}, '
                 f'seed {run.seed} ({run.run_dir})')

    def done(self, run: GridRun, result: dict) -> None:
        now = time.monotonic()
        self.finished += 1
        self.durations.append(now - self.started_at.pop(run.index,
                                                        self.start))
        left = self.to_run - len(self.durations)
        eta = sum(self.durations) / len(self.durations) * left / self.slots
        self.log(f'[compare] {run.label} seed {run.seed}: fused top-1 '
                 f'{result["top1"]:.2f}, {result["branches"]} branches, step '
                 f'{result["step_time"]:.4f} s; {self.finished}/{self.total} '
                 f'runs done in {_minutes(now - self.start)}'
                 + (f', ETA {_minutes(eta)}' if left else ''))


def _minutes(seconds: float) -> str:
    return f'{seconds:.0f} s' if seconds < 120 else f'{seconds / 60:.1f} min'


# ----------------------------------------------------------------------------
# The engines


Execute = Callable[[str, str, int, Optional[int], Optional[int]], dict]


def run_runs(engine: GridEngine, runs: Sequence[GridRun],
             needs: Dict[str, Sequence[str]],
             prepare: Callable[[GridRun], None],
             execute: Execute,
             on_done: Callable[[GridRun, dict], None],
             progress: GridProgress) -> None:
    """Execute ``runs`` (none finished yet) on ``engine``: ``prepare(run)``
    writes a run's config (here, when every run it ``needs`` has finished),
    ``execute(run_dir, label, seed, cpus, gpus)`` runs it and returns its
    result (on Ray, in a worker: a module-level function, which Ray finds
    by its name), ``on_done(run, result)`` takes each result as it comes.
    The first failure stops the grid: runs under way finish, no other one
    starts, and the failure is raised."""
    if engine.kind == 'ray':
        return _run_on_ray(engine, runs, needs, prepare, execute, on_done,
                           progress)
    for run in runs:
        progress.started(run)
        prepare(run)
        result = execute(run.run_dir, run.label, run.seed,
                         engine.cpus_per_run, engine.gpus_per_run)
        progress.done(run, result)
        on_done(run, result)


def grid_run_task(execute: Execute, cwd: str, run_dir: str, label: str,
                  seed: int, cpus: Optional[int],
                  gpus: Optional[int]) -> dict:
    """A Ray task: one run, in the driver's working directory (relative
    paths in configs and results mean what they mean to the driver)."""
    if not osp.isdir(run_dir):
        raise CompareError(f'{run_dir} is not on this Ray node: the work dir '
                           'must be on a file system every node sees, at the '
                           'same path')
    os.chdir(cwd)
    return execute(run_dir, label, seed, cpus, gpus)


def _ready(run: GridRun, needs: Dict[str, Sequence[str]],
           waiting: Dict[tuple, GridRun]) -> bool:
    """Whether none of the runs ``run`` needs is still to finish."""
    return not any((label, run.seed) in waiting
                   for label in needs.get(run.label, ()))


def _run_on_ray(engine, runs, needs, prepare, execute, on_done,
                progress) -> None:
    try:
        import ray
    except ImportError:
        raise CompareError('--engine ray needs Ray: pip install -r '
                           'requirements/ray.txt') from None
    import logging
    if engine.address is None:
        ray.init(address='local', include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)
    else:
        try:
            ray.init(address=engine.address, logging_level=logging.WARNING,
                     log_to_driver=False)
        except ConnectionError as e:
            raise _connection_error(engine.address, e) from None
    try:
        cpus, gpus = _ray_resources(ray, engine, progress.log)
        progress.slots = _capacity(ray, cpus, gpus)
        task = ray.remote(grid_run_task).options(
            num_cpus=cpus, num_gpus=gpus, max_retries=engine.max_retries,
            retry_exceptions=[ToolKilled])
        waiting = {(r.label, r.seed): r for r in runs}
        in_flight, failure, cwd = {}, None, os.getcwd()
        # Runs that others wait for (the searches) first, then grid order:
        # no run waits at the end of the grid for one started late.
        wanted = {label for labels in needs.values() for label in labels}
        while waiting or in_flight:
            # Ray gets no more runs than its nodes run at once: runs start
            # in this order, and none starts after a failure.
            free = _capacity(ray, cpus, gpus) - len(in_flight)
            ready = sorted((r for r in waiting.values()
                            if failure is None and _ready(r, needs, waiting)
                            and r not in in_flight.values()),
                           key=lambda r: (r.label not in wanted, r.index))
            for run in ready[:max(0, free)]:
                progress.started(run)
                try:
                    prepare(run)  # its config: here, now that it can be made
                except Exception as e:  # let the runs under way finish
                    failure = _failed(run, e, failure, engine, progress)
                    break
                in_flight[task.remote(execute, cwd, osp.abspath(run.run_dir),
                                      run.label, run.seed, cpus, gpus)] = run
            if not in_flight:
                break
            finished, _ = ray.wait(list(in_flight), num_returns=1)
            run = in_flight.pop(finished[0])
            try:
                result = ray.get(finished[0])
            except Exception as e:
                failure = _failed(run, e, failure, engine, progress)
                continue
            del waiting[(run.label, run.seed)]
            progress.done(run, result)
            on_done(run, result)
        if failure is not None:
            raise failure
    finally:
        ray.shutdown()


def _connection_error(address: str, error: Exception) -> CompareError:
    """One line for a cluster Ray could not join. Ray (2.60) starts clusters
    with token authentication but sends no token to an explicit address
    unless told to; its error says so only deep in a cause's text."""
    causes = []
    while error is not None:
        causes.append(str(error))
        error = error.__cause__ or error.__context__
    if any('InvalidAuthToken' in c for c in causes):
        return CompareError(
            f'the Ray cluster at {address} wants its token: set '
            'RAY_AUTH_MODE=token here (and RAY_AUTH_TOKEN, or the token in '
            '~/.ray/auth_token)')
    return CompareError(f'no Ray cluster at {address}: {causes[0]}')


def _ray_resources(ray, engine: GridEngine, log) -> tuple:
    """(CPUs, GPUs) of each run; a request no node can meet is an error
    (Ray would wait for it forever)."""
    nodes = [n['Resources'] for n in ray.nodes() if n.get('Alive')]
    has_gpus = any(n.get('GPU', 0) for n in nodes)
    cpus = engine.cpus_per_run or 1
    gpus = (engine.gpus_per_run if engine.gpus_per_run is not None
            else int(has_gpus))
    if not any(n.get('CPU', 0) >= cpus and n.get('GPU', 0) >= gpus
               for n in nodes):
        raise CompareError(
            f'no Ray node has {cpus} CPUs and {gpus} GPUs for a run (nodes: '
            + '; '.join(f'{n.get("CPU", 0):g} CPUs, {n.get("GPU", 0):g} GPUs'
                        for n in nodes) + ')')
    total = sum(n.get('CPU', 0) for n in nodes)
    log(f'[compare] Ray: {len(nodes)} node(s), {total:g} CPUs, '
        f'{sum(n.get("GPU", 0) for n in nodes):g} GPUs; each run '
        f'{cpus} CPU(s), {gpus} GPU(s): {_capacity(ray, cpus, gpus)} at once')
    return cpus, gpus


def _capacity(ray, cpus: int, gpus: int) -> int:
    """How many runs the cluster's live nodes can run at once (at least
    one: a node that joins later adds to it)."""
    runs = 0
    for node in ray.nodes():
        if node.get('Alive'):
            have = node['Resources']
            fit = int(have.get('CPU', 0) // cpus)
            if gpus:
                fit = min(fit, int(have.get('GPU', 0) // gpus))
            runs += fit
    return max(1, runs)


def _failed(run: GridRun, error: Exception, first: Optional[Exception],
            engine: GridEngine, progress: GridProgress) -> Exception:
    """Say that ``run`` failed; the error the grid ends with (the first).
    A run's own error (a ``ToolError`` naming its log) is raised as it is,
    not wrapped in Ray's."""
    import ray
    cause = getattr(error, 'cause', None)
    if isinstance(cause, (ToolError, CompareError)):
        error = cause
    elif isinstance(error, ray.exceptions.WorkerCrashedError):
        error = ToolError(
            f'{run.run_dir}: its worker died {engine.max_retries + 1} times; '
            'run the comparison again to resume it from its checkpoint')
    progress.log(f'[compare] {run.label} seed {run.seed} failed: {error}')
    return first or error


__all__ = ['ENGINES', 'GridEngine', 'GridProgress', 'GridRun',
           'add_engine_args', 'engine_from_args', 'pinned', 'run_lock',
           'run_runs', 'train_command']
