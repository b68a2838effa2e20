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
   names the torch version and the op flavour (``cpu``, or
   ``cu<ver>-sm<arch list>``).

CUDA ops (a visible GPU, or ``FORCE_CUDA=1``) need a compiler of torch's
CUDA version: :func:`find_cuda_home` takes the toolkit ``CUDA_HOME`` names,
else NVIDIA's wheels (``requirements/cuda.txt``, installed if missing), else
another installed toolkit of that version; without one, CPU ops and one
warning line. ``--check-cuda`` reports (or installs) the compiler alone.

A second call finds the cached wheel and prints its path at once. Only the
standard library is used (and torch, to read its version). The wheel path is
the last line of stdout.

Environment:
    REPNAS_CACHE_DIR   cache root (default ``~/.cache/repnas_mm``)
    MAX_JOBS           parallel compile jobs (default: number of CPUs)
    FORCE_CUDA=1       build CUDA ops even if no GPU is visible
    CUDA_HOME          a CUDA toolkit to compile with (if torch's version)
    TORCH_CUDA_ARCH_LIST  compute capabilities to compile for (default: the
                       visible GPUs', else :data:`DEFAULT_CUDA_ARCH_LIST`)
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
from typing import List, Optional, Tuple

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


def cuda_wanted() -> bool:
    """CUDA ops for a CUDA build of torch where a GPU is visible, or under
    ``FORCE_CUDA=1``."""
    import torch
    return bool(torch.version.cuda) and (
        torch.cuda.is_available() or os.environ.get('FORCE_CUDA', '0') == '1')


def build_variant(use_cuda: Optional[bool] = None):
    """Which wheel this torch needs: torch version + op flavour (``cpu``, or
    ``cu<ver>-sm<arch list>``), and whether it has CUDA ops."""
    import torch
    use_cuda = cuda_wanted() if use_cuda is None else use_cuda
    flavour = 'cpu'
    if use_cuda:
        arch = re.sub(r'[^0-9a-zA-Z]+', '_', cuda_arch_list()).strip('_')
        flavour = f'cu{torch.version.cuda.replace(".", "")}-sm{arch}'
    torch_version = torch.__version__.split('+')[0]
    py = f'py{sys.version_info.major}{sys.version_info.minor}'
    return f'torch{torch_version}-{flavour}-{py}', use_cuda


# -- the CUDA compiler ------------------------------------------------------
#: NVIDIA's compiler as wheels, at the CUDA version torch was built with.
CUDA_REQUIREMENTS = REPO_ROOT / 'requirements' / 'cuda.txt'
#: Compute capabilities a CUDA build targets under FORCE_CUDA=1 when no GPU
#: is visible to read them from: Turing to Hopper (CUDA 13 starts at 7.5),
#: plus PTX that newer GPUs compile at load time.
DEFAULT_CUDA_ARCH_LIST = '7.5;8.0;8.6;8.9;9.0+PTX'


class CompilerMissing(RuntimeError):
    """No CUDA compiler of torch's CUDA version can be had."""


def nvcc_release(nvcc: Path) -> Optional[str]:
    """``X.Y`` from ``nvcc --version``, or None if it does not run."""
    try:
        out = subprocess.run([str(nvcc), '--version'], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r'release (\d+\.\d+)', out)
    return found[1] if found else None


def named_cuda_homes() -> List[Path]:
    """The toolkits a user named: ``CUDA_HOME``, ``CUDA_PATH``."""
    return [Path(os.environ[k]) for k in ('CUDA_HOME', 'CUDA_PATH')
            if os.environ.get(k)]


def system_cuda_homes() -> List[Path]:
    """Other installed toolkits: the ``nvcc`` on ``PATH`` (two folders up
    from its real path), ``/usr/local/cuda``."""
    homes = []
    nvcc = shutil.which('nvcc')
    if nvcc:
        homes.append(Path(nvcc).resolve().parents[1])
    homes.append(Path('/usr/local/cuda'))
    return homes


def toolkit_release(home: Path) -> Optional[str]:
    """The CUDA release of the toolkit at ``home``, or None if it is not
    one torch can build with (no ``bin/nvcc`` that runs, no runtime
    headers: ``/usr/local`` holding only an ``nvcc`` wrapper is not)."""
    if not (home / 'include' / 'cuda_runtime.h').is_file():
        return None
    return nvcc_release(home / 'bin' / 'nvcc')


def wheel_cuda_tree(cuda: str) -> Optional[Path]:
    """Where NVIDIA's wheels put CUDA ``cuda`` in this environment
    (``site-packages/nvidia/cu13`` beside torch's runtime libraries)."""
    import importlib.util
    spec = importlib.util.find_spec('nvidia')
    for root in (spec.submodule_search_locations or []) if spec else []:
        tree = Path(root) / f'cu{cuda.split(".")[0]}'
        if tree.is_dir():
            return tree
    return None


def pinned_cuda_release() -> str:
    """``X.Y`` of the nvcc that requirements/cuda.txt pins."""
    found = re.search(r'^nvidia-cuda-nvcc==(\d+\.\d+)\.',
                      CUDA_REQUIREMENTS.read_text(), re.M)
    if not found:
        raise RuntimeError(f'{CUDA_REQUIREMENTS} pins no nvidia-cuda-nvcc')
    return found[1]


def install_compiler_wheels():
    """NVIDIA's compiler wheels into this environment (--no-deps: their
    runtime libraries are torch's own)."""
    log(f'installing the CUDA compiler ({CUDA_REQUIREMENTS.name}) into '
        f'{sys.prefix}')
    proc = subprocess.run([
        sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps',
        '--disable-pip-version-check', '--no-input', '-r',
        str(CUDA_REQUIREMENTS)
    ],
                          capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise CompilerMissing(
            'pip could not install NVIDIA\'s compiler wheels '
            f'({CUDA_REQUIREMENTS.name}); does your package index have them?')


def assemble_cuda_home(tree: Path, home: Path) -> Path:
    """A ``CUDA_HOME`` that torch's extension builder accepts, made of
    symbolic links into the wheels' tree: ``bin`` (nvcc, which finds
    ``nvvm`` and its ``include`` beside itself), ``include``, ``nvvm``, and
    ``lib64`` with the unversioned ``libcudart.so`` the linker asks for."""
    if (home / 'lib64' / 'libcudart.so').exists() and \
            (home / 'bin').resolve() == (tree / 'bin').resolve():
        return home
    partial = home.with_name(home.name + '.part')
    shutil.rmtree(partial, ignore_errors=True)
    (partial / 'lib64').mkdir(parents=True)
    for name in ('bin', 'include', 'nvvm'):
        (partial / name).symlink_to(tree / name, target_is_directory=True)
    for lib in sorted((tree / 'lib').iterdir()):
        (partial / 'lib64' / lib.name).symlink_to(lib)
    runtime = sorted((tree / 'lib').glob('libcudart.so.*'))
    if not runtime:
        raise CompilerMissing(f'no libcudart.so.* in {tree / "lib"}')
    (partial / 'lib64' / 'libcudart.so').symlink_to(runtime[0].name)
    shutil.rmtree(home, ignore_errors=True)
    partial.replace(home)
    return home


def find_cuda_home(install: bool = True) -> Tuple[Path, str]:
    """``(CUDA_HOME, release)`` of a CUDA compiler of torch's version
    (``torch.version.cuda``, major and minor), in this order:

    1. the toolkit ``CUDA_HOME`` or ``CUDA_PATH`` names, if its version is
       torch's (a user's explicit choice);
    2. NVIDIA's wheels in this environment (``requirements/cuda.txt``,
       installed first with ``install``) behind a ``CUDA_HOME`` assembled
       in ``<env>/cuda-X.Y``: pinned, so every build gets the same
       compiler;
    3. another installed toolkit of torch's version (``nvcc`` on ``PATH``,
       ``/usr/local/cuda``), where the wheels cannot be had (a mirror
       without them).

    :class:`CompilerMissing` (one line) if none.
    """
    import torch
    want = torch.version.cuda
    if not want:
        raise CompilerMissing(f'torch {torch.__version__} is a CPU build: it '
                              'has no CUDA version to compile for')
    found = []

    def matching(homes):
        for home in homes:
            release = toolkit_release(home)
            if release == want:
                return home
            if release:
                found.append(f'{home} has CUDA {release}')
        return None

    home = matching(named_cuda_homes())
    if home:
        return home, want
    tree = wheel_cuda_tree(want)
    if (tree is None or not (tree / 'bin' / 'nvcc').exists()) and install:
        if pinned_cuda_release() != want:
            raise CompilerMissing(
                f'{CUDA_REQUIREMENTS.name} pins the CUDA '
                f'{pinned_cuda_release()} compiler, torch is built with CUDA '
                f'{want}: pin nvidia-cuda-nvcc/-crt/-cccl and nvidia-nvvm '
                f'{want}.x there')
        try:
            install_compiler_wheels()
        except CompilerMissing as exc:
            found.append(str(exc))
        tree = wheel_cuda_tree(want)
    if tree is not None and (tree / 'bin' / 'nvcc').exists():
        release = nvcc_release(tree / 'bin' / 'nvcc')
        if release == want:
            return assemble_cuda_home(
                tree, Path(sys.prefix) / f'cuda-{want}'), release
        found.append(f'{tree} has CUDA {release}')
    home = matching(system_cuda_homes())
    if home:
        return home, want
    raise CompilerMissing(
        f'no CUDA {want} compiler (torch is built with CUDA {want}'
        + (f'; {"; ".join(found)}' if found else '') + '): run `python '
        'scripts/build_mmcv.py --check-cuda` to install NVIDIA\'s (pip '
        f'install --no-deps -r requirements/{CUDA_REQUIREMENTS.name}), or '
        f'set CUDA_HOME to a CUDA {want} toolkit')


def cuda_arch_list() -> str:
    """``TORCH_CUDA_ARCH_LIST`` if set; else the visible GPUs' compute
    capabilities; else :data:`DEFAULT_CUDA_ARCH_LIST`."""
    import torch
    if os.environ.get('TORCH_CUDA_ARCH_LIST'):
        return os.environ['TORCH_CUDA_ARCH_LIST']
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i)
                       for i in range(torch.cuda.device_count())})
        return ';'.join(f'{major}.{minor}' for major, minor in caps)
    return DEFAULT_CUDA_ARCH_LIST


def installed_ok() -> int:
    """``--installed``: 0 if this environment's mmcv is 2.1.0 with compiled
    ops of the flavour a build here would give (CUDA ops where they are
    wanted and a compiler can be had, else CPU ops), else 1; one line."""
    proc = subprocess.run([
        sys.executable, '-c', 'import mmcv, mmcv._ext; from mmcv.ops import '
        'get_compiling_cuda_version as v; print(mmcv.__version__ + "|" + v())'
    ], capture_output=True, text=True)
    if proc.returncode != 0:
        log('mmcv with compiled ops is not installed')
        return 1
    version, cuda_ops = proc.stdout.strip().splitlines()[-1].split('|')
    has_cuda = cuda_ops != 'not available'
    wanted = False
    if cuda_wanted():
        try:
            find_cuda_home(install=False)
            wanted = True
        except CompilerMissing:
            pass
    if version != MMCV_VERSION or has_cuda != wanted:
        log(f'installed: mmcv {version}, CUDA ops {cuda_ops}; wanted: '
            f'{MMCV_VERSION} with {"CUDA" if wanted else "CPU"} ops')
        return 1
    log(f'already installed: mmcv {version} with '
        f'{"CUDA " + cuda_ops if has_cuda else "CPU"} ops')
    return 0


def check_cuda() -> int:
    """``--check-cuda``: two lines (``CUDA_HOME=...``, ``nvcc release
    X.Y``) and 0, or one line and 1."""
    try:
        home, release = find_cuda_home(install=True)
    except CompilerMissing as exc:
        print(f'[build_mmcv] {exc}', file=sys.stderr)
        return 1
    print(f'CUDA_HOME={home}')
    print(f'nvcc release {release}')
    return 0


# -- the sdist and the build ------------------------------------------------
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


def build_wheel(src: Path, overlay: Path, out: Path,
                cuda_home: Optional[Path], log_path: Path):
    """Compile mmcv's ops into a wheel in ``out``: CUDA ops too with a
    ``cuda_home`` (for :func:`cuda_arch_list`), else CPU ops only."""
    env = overlay_env(overlay)
    env['MMCV_WITH_OPS'] = '1'
    env.setdefault('MAX_JOBS', str(os.cpu_count() or 1))
    use_cuda = cuda_home is not None
    if use_cuda:
        env.update(FORCE_CUDA='1', CUDA_HOME=str(cuda_home),
                   TORCH_CUDA_ARCH_LIST=cuda_arch_list())
        env['PATH'] = os.pathsep.join([str(cuda_home / 'bin'), env['PATH']])
    else:
        env['FORCE_CUDA'] = '0'  # also where a GPU is visible
    cmd = [
        sys.executable, '-m', 'pip', 'wheel', '--verbose', '--no-deps',
        '--no-build-isolation', '--disable-pip-version-check', '--wheel-dir',
        str(out),
        str(src)
    ]
    flavour = (f'CUDA, CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST='
               f'{env["TORCH_CUDA_ARCH_LIST"]}') if use_cuda else 'CPU'
    log(f'compiling mmcv {MMCV_VERSION} ops ({flavour}, '
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
    parser.add_argument(
        '--check-cuda',
        action='store_true',
        help='make sure a CUDA compiler of torch\'s version is there '
        '(installing NVIDIA\'s wheels if needed), print CUDA_HOME and its '
        'nvcc release, and exit; 1 if none can be had')
    parser.add_argument(
        '--installed',
        action='store_true',
        help='exit 0 if the installed mmcv has the ops a build here would '
        'give, else 1')
    args = parser.parse_args()
    if args.check_cuda:
        return check_cuda()
    if args.installed:
        return installed_ok()

    cuda_home = None
    if cuda_wanted():
        try:  # --print-variant only looks; a build installs what it needs
            cuda_home = find_cuda_home(install=not args.print_variant)[0]
        except CompilerMissing as exc:
            log(f'WARNING: CPU ops only: {exc}')
    variant, _ = build_variant(cuda_home is not None)
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
        built = build_wheel(src, overlay, tmp / 'dist', cuda_home,
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
