#!/usr/bin/env python
"""Build (once) and cache an mmcv 2.1.0 wheel with compiled ops for the torch
of the interpreter running this script.

Why: PyPI has no mmcv 2.1.0 wheel for torch 2.14, and its sdist does not
build as published (``setup.py`` imports ``pkg_resources``, which
setuptools >= 81 removed, and passes ``-std=c++14/17``, while the ATen
headers of torch 2.14 require C++20). This script

1. downloads the sdist with ``pip download`` (the user's pip configuration
   applies: index, mirror, proxy, certificates) and checks its sha256,
2. replaces every ``-std=c++14``/``-std=c++17`` in ``setup.py`` by
   ``-std=c++20`` (host compiler and nvcc alike),
3. builds a wheel with ``--no-build-isolation`` against the installed torch,
   with ``setuptools<70`` (and ``wheel``, ``ninja``) from an overlay folder put
   first on ``PYTHONPATH`` so the environment's own setuptools stays as torch
   wants it,
4. stores the wheel atomically under ``<cache>/<variant>/`` where ``variant``
   names the torch version and the op flavour (``cpu`` or ``cu<ver>``).

A second call finds the cached wheel and prints its path at once. Only the
standard library is used (and torch, to read its version). The wheel path is
the last line of stdout.

Environment:
    REPNAS_CACHE_DIR   cache root (default ``~/.cache/repnas_mm``)
    MAX_JOBS           parallel compile jobs (default: number of CPUs)
    FORCE_CUDA=1       build CUDA ops even if no GPU is visible (needs nvcc)
    TORCH_CUDA_ARCH_LIST  passed through to torch's extension builder
"""
import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

MMCV_VERSION = '2.1.0'
SDIST_NAME = f'mmcv-{MMCV_VERSION}.tar.gz'
SDIST_SHA256 = \
    'd387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f'
REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_REQUIREMENTS = REPO_ROOT / 'requirements' / 'build.txt'


def log(msg):
    print(f'[build_mmcv] {msg}', file=sys.stderr, flush=True)


def cache_root():
    default = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache'))
    return Path(os.environ.get('REPNAS_CACHE_DIR', default / 'repnas_mm'))


def build_variant():
    """Which wheel this torch needs: torch version + op flavour."""
    import torch
    cuda = torch.version.cuda if (torch.cuda.is_available() or os.environ.get(
        'FORCE_CUDA', '0') == '1') else None
    flavour = f'cu{cuda.replace(".", "")}' if cuda else 'cpu'
    arch = os.environ.get('TORCH_CUDA_ARCH_LIST')
    if cuda and arch:
        flavour += '-sm' + re.sub(r'[^0-9a-zA-Z]+', '_', arch).strip('_')
    torch_version = torch.__version__.split('+')[0]
    py = f'py{sys.version_info.major}{sys.version_info.minor}'
    return f'torch{torch_version}-{flavour}-{py}', bool(cuda)


def download_sdist(dest: Path, overlay: Path) -> Path:
    """The mmcv sdist, through ``pip download`` (so the user's pip settings,
    index, mirror, proxy and certificates, apply), sha256-checked.

    pip reads an sdist's metadata even with ``--no-deps``, which runs mmcv's
    ``setup.py`` (it imports ``pkg_resources``): the build-tool overlay
    supplies a setuptools that has it, as for the build itself.
    """
    target = dest / SDIST_NAME
    if target.exists() and sha256(target) == SDIST_SHA256:
        log(f'using downloaded {target}')
        return target
    log(f'pip download --no-binary :all: --no-deps mmcv=={MMCV_VERSION}')
    with tempfile.TemporaryDirectory(prefix='mmcv-sdist-', dir=dest) as tmp:
        proc = subprocess.run([
            sys.executable, '-m', 'pip', 'download', '--quiet',
            '--disable-pip-version-check', '--no-input', '--no-deps',
            '--no-build-isolation', '--no-binary', ':all:', '--dest', tmp,
            f'mmcv=={MMCV_VERSION}'
        ],
                              env=overlay_env(overlay),
                              capture_output=True,
                              text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise RuntimeError(f'pip could not download {SDIST_NAME} '
                               f'(exit {proc.returncode})')
        got = Path(tmp) / SDIST_NAME
        if not got.exists():
            raise RuntimeError(f'pip download did not produce {SDIST_NAME} '
                               f'(got {sorted(os.listdir(tmp))})')
        digest = sha256(got)
        if digest != SDIST_SHA256:
            raise RuntimeError(f'sha256 mismatch for {SDIST_NAME}: got '
                               f'{digest}, expected {SDIST_SHA256}')
        got.replace(target)  # same file system: atomic
    return target


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def patch_setup_py(src: Path) -> int:
    """Make mmcv's setup.py ask for C++20 everywhere; return #replacements."""
    setup_py = src / 'setup.py'
    text = setup_py.read_text()
    patched, count = re.subn(r'-std=c\+\+1[47]', '-std=c++20', text)
    if count == 0:
        raise RuntimeError(f'no -std=c++14/17 flag found in {setup_py}: '
                           'the sdist is not the one this script knows')
    setup_py.write_text(patched)
    return count


def install_build_overlay(overlay: Path):
    """setuptools<70, wheel and ninja into a folder of their own."""
    if (overlay / '.complete').exists():
        return
    shutil.rmtree(overlay, ignore_errors=True)
    log(f'installing build tools ({BUILD_REQUIREMENTS.name}) into {overlay}')
    # pip compares the overlay with the environment's own packages and
    # complains that torch wants setuptools>=77: expected, as the overlay is
    # for the mmcv build only. Show pip's output only when it fails.
    proc = subprocess.run([
        sys.executable, '-m', 'pip', 'install', '--quiet',
        '--disable-pip-version-check', '--no-warn-script-location',
        '--target', str(overlay), '-r',
        str(BUILD_REQUIREMENTS)
    ],
                          capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise RuntimeError('could not install the mmcv build tools')
    (overlay / '.complete').touch()


def overlay_env(overlay: Path) -> dict:
    """The environment with the build-tool overlay first on the paths."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [str(overlay)] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    env['PATH'] = os.pathsep.join([str(overlay / 'bin'), env.get('PATH', '')])
    return env


def build_wheel(src: Path, overlay: Path, out: Path, use_cuda: bool,
                log_path: Path):
    env = overlay_env(overlay)
    env['MMCV_WITH_OPS'] = '1'
    env.setdefault('MAX_JOBS', str(os.cpu_count() or 1))
    if use_cuda:
        env['FORCE_CUDA'] = '1'
    cmd = [
        sys.executable, '-m', 'pip', 'wheel', '--verbose', '--no-deps',
        '--no-build-isolation', '--disable-pip-version-check', '--wheel-dir',
        str(out),
        str(src)
    ]
    log(f'compiling mmcv {MMCV_VERSION} ops ({"CUDA" if use_cuda else "CPU"}, '
        f'MAX_JOBS={env["MAX_JOBS"]}); full log: {log_path}')
    progress = re.compile(r'^\[(\d+)/(\d+)\]')
    start = time.time()
    with open(log_path, 'w') as logf:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1)
        for line in proc.stdout:
            logf.write(line)
            m = progress.match(line.strip())
            if m:
                log(f'  compiled {m.group(1)}/{m.group(2)} units '
                    f'({time.time() - start:.0f} s)')
        rc = proc.wait()
    if rc != 0:
        tail = log_path.read_text().splitlines()[-40:]
        sys.stderr.write('\n'.join(tail) + '\n')
        raise RuntimeError(f'mmcv wheel build failed (exit {rc}); '
                           f'full log: {log_path}')
    wheels = list(out.glob('mmcv-*.whl'))
    if len(wheels) != 1:
        raise RuntimeError(f'expected one mmcv wheel in {out}, got {wheels}')
    log(f'built {wheels[0].name} in {time.time() - start:.0f} s')
    return wheels[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--rebuild', action='store_true', help='ignore a cached wheel')
    parser.add_argument(
        '--print-variant',
        action='store_true',
        help='print the cache folder this torch uses and exit')
    args = parser.parse_args()

    variant, use_cuda = build_variant()
    wheel_dir = cache_root() / 'wheels' / variant
    if args.print_variant:
        print(wheel_dir)
        return 0
    cached = sorted(wheel_dir.glob(f'mmcv-{MMCV_VERSION}-*.whl'))
    if cached and not args.rebuild:
        log(f'cached wheel: {cached[-1]}')
        print(cached[-1])
        return 0

    root = cache_root()
    (root / 'sdist').mkdir(parents=True, exist_ok=True)
    overlay = root / 'build-tools'
    install_build_overlay(overlay)
    sdist = download_sdist(root / 'sdist', overlay)

    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='mmcv-build-', dir=root) as tmp:
        tmp = Path(tmp)
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter='data')
        src = tmp / f'mmcv-{MMCV_VERSION}'
        count = patch_setup_py(src)
        log(f'patched setup.py: {count} compiler flags -> -std=c++20')
        built = build_wheel(src, overlay, tmp / 'dist', use_cuda,
                            root / f'mmcv-build-{variant}.log')
        # Copy next to its final place first, then rename: atomic.
        partial = wheel_dir / (built.name + '.part')
        shutil.copyfile(built, partial)
        final = wheel_dir / built.name
        partial.replace(final)
    log(f'cached wheel: {final}')
    print(final)
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        log(f'ERROR: {exc}')
        sys.exit(1)
