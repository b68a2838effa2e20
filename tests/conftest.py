"""Shared fixtures: the repo, the real test data, and running our CLIs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from repnas_mm import experiments

REPO = Path(__file__).resolve().parents[1]
# Real images shipped in the repository (tests/data/README.md): no test reads
# anything outside the clone, and none skips for want of data.
TEST_DATA = REPO / 'tests' / 'data'


def _data(name):
    path = TEST_DATA / name
    assert path.is_dir(), f'{path} is missing: it is part of the repository'
    return path


@pytest.fixture
def cifar10_tiny():
    return _data('cifar10_tiny')


@pytest.fixture
def coco8():
    return _data('coco8')


def cls_data_options(root):
    """--cfg-options pointing a classification config at ``root``. The test
    data sets have no held-out split: testing reads ``val`` (tests compare
    what tools/test.py reports with the last validation)."""
    return [
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        'test_dataloader.dataset.data_prefix=val',
    ]


TINY_SEARCH = REPO / 'tests' / 'configs' / 'odbb_cls_cifar10_tiny.py'


def tiny_grid_args(work, *args, options=()):
    """tools/compare_architectures.py on TINY_SEARCH and cifar10_tiny, a
    thread a run: the search fixes its architecture after epoch 1 of 2
    (so its last validation uses the statistics the checkpoint keeps)."""
    return ('tools/compare_architectures.py', TINY_SEARCH, '--work-dir', work,
            '--cpus-per-run', '1', *args, '--cfg-options',
            *cls_data_options(_data('cifar10_tiny')),
            'train_cfg.max_epochs=2', 'custom_hooks.0.fix_epoch=1', *options)


@pytest.fixture(scope='session')
def tiny_comparison(tmp_path_factory):
    """A real comparison, sequential engine (tests/test_compare.py checks
    it; tests/test_engines.py compares other engines' runs with it):
    repnas, random and the variant repnas-no_noise, seeds 0 and 1,
    interrupted after three runs (--max-runs) and continued. (work dir,
    the first command's output, the second's)."""
    tmp = tmp_path_factory.mktemp('tiny_comparison')
    variants = tmp / 'variants.py'
    variants.write_text("variants = dict(no_noise={'custom_hooks.0.noise': "
                        "False})\n")
    args = tiny_grid_args(tmp / 'cmp', '--methods', 'repnas', 'random',
                          '--seeds', '0', '1', '--variants', variants)
    first = run_tool(*args, '--max-runs', '3')
    return tmp / 'cmp', first, run_tool(*args)


def det_data_options(root):
    """--cfg-options pointing a (stock-layout) CenterNet config at coco8."""
    return [
        f'train_dataloader.dataset.dataset.data_root={root}/',
        f'val_dataloader.dataset.data_root={root}/',
        f'test_dataloader.dataset.data_root={root}/',
        f'val_evaluator.ann_file={root}/instances_val.json',
        f'test_evaluator.ann_file={root}/instances_val.json',
    ]


@pytest.fixture(scope='session')
def searched_classifier(tmp_path_factory):
    """A real RepNAS classification search (tools/train.py, cifar10_tiny).

    The small demo ODBBNet, 2 epochs of 4 iterations: one searching, then
    the architecture fixed. Its work dir holds epoch_2.pth (which carries
    the architecture) and searched_arch.json.
    """
    root = _data('cifar10_tiny')
    work = tmp_path_factory.mktemp('searched_classifier')
    run_tool('tools/train.py', REPO / 'tests' / 'configs' /
             'odbb_cls_cifar10_tiny.py', '--work-dir', work, '--cfg-options',
             'train_cfg.max_epochs=2', 'param_scheduler.T_max=2',
             'param_scheduler.end=2', 'custom_hooks.0.warmup_epochs=0',
             'custom_hooks.0.fix_epoch=1', 'train_dataloader.batch_size=4',
             *cls_data_options(root))
    return work


def run_tool(*args, timeout=900, env=None, check=True):
    """Run ``python <args>`` from the repo root; fail with the output tail."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1')
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, *map(str, args)],
                          cwd=REPO,
                          env=full_env,
                          capture_output=True,
                          text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        out = (proc.stdout + proc.stderr)[-6000:]
        pytest.fail(f'{" ".join(map(str, args))} exited {proc.returncode}:'
                    f'\n{out}')
    return proc


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's rendezvous)."""
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_dist_train(config, nproc, *args, timeout=900):
    """tools/dist_train.sh (torchrun, gloo on CPU); fail with the output tail."""
    port = free_port()
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh',
         str(config), str(nproc), *map(str, args)],
        cwd=REPO,
        env={
            'PYTHON': sys.executable,
            'PYTHONPATH': str(REPO),  # test-only hooks in tests/probes.py
            'PORT': str(port),
            'PATH': '/usr/bin:/bin',
            'OMP_NUM_THREADS': '1',
        },
        capture_output=True,
        text=True,
        timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f'dist_train.sh exited {proc.returncode}:\n'
                    f'{(proc.stdout + proc.stderr)[-6000:]}')
    return proc


def read_scalars(work_dir):
    """The scalars mmengine's LocalVisBackend logged in the latest run."""
    records = experiments.read_scalars(str(work_dir), latest_only=True)
    assert records, f'no scalars.json under {work_dir}'
    return records
