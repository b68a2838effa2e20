"""The CUDA compiler a GPU build of mmcv gets (scripts/build_mmcv.py), checked
on a CPU machine: compiling needs no GPU.

Which toolkit is chosen (a user's CUDA_HOME of torch's version, else NVIDIA's
wheels in this environment, else another installed toolkit of torch's
version; a version mismatch is refused), what ``--check-cuda`` prints, the
CPU-ops fallback when no compiler can be had, and a tiny CUDA kernel built by
torch's extension builder with the CUDA_HOME assembled from the wheels.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import REPO
from .test_env import _load_build_mmcv

CUDA = torch.version.cuda  # the pinned torch is a CUDA build


def fake_toolkit(root: Path, release: str, headers: bool = True) -> Path:
    """A folder with a ``bin/nvcc`` that reports ``release``."""
    (root / 'bin').mkdir(parents=True)
    nvcc = root / 'bin' / 'nvcc'
    nvcc.write_text('#!/bin/sh\necho "Cuda compilation tools, release '
                    f'{release}, V{release}.1"\n')
    nvcc.chmod(0o755)
    if headers:
        (root / 'include').mkdir()
        (root / 'include' / 'cuda_runtime.h').write_text('')
    return root


@pytest.fixture
def build(monkeypatch):
    """build_mmcv with no toolkit named and none installed, by default."""
    module = _load_build_mmcv()
    for key in ('CUDA_HOME', 'CUDA_PATH', 'TORCH_CUDA_ARCH_LIST',
                'FORCE_CUDA'):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(module, 'system_cuda_homes', lambda: [])
    return module


def test_a_named_toolkit_of_torchs_version_is_chosen_another_is_refused(
        build, tmp_path, monkeypatch):
    other = '12.4' if CUDA != '12.4' else '12.6'
    monkeypatch.setenv('CUDA_HOME', str(fake_toolkit(tmp_path / 'a', CUDA)))
    assert build.find_cuda_home(install=False) == (tmp_path / 'a', CUDA)
    # A mismatched one is passed over (for the wheels), and named if
    # nothing else matches.
    monkeypatch.setenv('CUDA_HOME', str(fake_toolkit(tmp_path / 'b', other)))
    monkeypatch.setattr(build, 'wheel_cuda_tree', lambda cuda: None)
    with pytest.raises(build.CompilerMissing,
                       match=f'no CUDA {CUDA} compiler .*{tmp_path / "b"} '
                       f'has CUDA {other}.*--check-cuda'):
        build.find_cuda_home(install=False)
    # Another installed toolkit of torch's version is the last resort; an
    # nvcc wrapper without the runtime headers (/usr/local/bin/nvcc) is no
    # toolkit.
    wrapper = fake_toolkit(tmp_path / 'usr_local', CUDA, headers=False)
    good = fake_toolkit(tmp_path / 'c', CUDA)
    monkeypatch.setattr(build, 'system_cuda_homes', lambda: [wrapper, good])
    assert build.find_cuda_home(install=False) == (good, CUDA)


def test_the_wheels_in_this_environment_come_before_an_installed_toolkit(
        build, tmp_path, monkeypatch):
    monkeypatch.setattr(build, 'system_cuda_homes',
                        lambda: [fake_toolkit(tmp_path / 'usr', CUDA)])
    home, release = build.find_cuda_home(install=False)
    assert release == CUDA
    assert home == Path(sys.prefix) / f'cuda-{CUDA}'
    tree = build.wheel_cuda_tree(CUDA)
    assert (home / 'bin').resolve() == (tree / 'bin').resolve()
    assert (home / 'lib64' / 'libcudart.so').resolve().name.startswith(
        'libcudart.so.')
    assert (home / 'include' / 'cuda_runtime.h').is_file()


def test_pins_of_another_cuda_version_are_refused_before_installing(
        build, monkeypatch):
    monkeypatch.setattr(build, 'wheel_cuda_tree', lambda cuda: None)
    monkeypatch.setattr(build, 'pinned_cuda_release', lambda: '11.8')
    monkeypatch.setattr(build, 'install_compiler_wheels',
                        lambda: pytest.fail('must not install'))
    with pytest.raises(build.CompilerMissing,
                       match=f'pins the CUDA 11.8 compiler, torch is built '
                       f'with CUDA {CUDA}'):
        build.find_cuda_home(install=True)


def test_requirements_pin_torchs_cuda_version():
    assert _load_build_mmcv().pinned_cuda_release() == CUDA


def test_check_cuda_prints_the_home_and_the_release():
    env = {k: v for k, v in os.environ.items()
           if k not in ('CUDA_HOME', 'CUDA_PATH')}
    proc = subprocess.run(
        [sys.executable, 'scripts/build_mmcv.py', '--check-cuda'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f'CUDA_HOME={Path(sys.prefix) / f"cuda-{CUDA}"}',
        f'nvcc release {CUDA}'
    ]


def test_check_cuda_says_in_one_line_what_is_missing(build, capsys,
                                                     monkeypatch):
    monkeypatch.setattr(build, 'wheel_cuda_tree', lambda cuda: None)
    monkeypatch.setattr(build, 'install_compiler_wheels', lambda: None)
    assert build.check_cuda() == 1
    err = capsys.readouterr()
    assert err.out == ''
    assert len(err.err.strip().splitlines()) == 1
    assert f'no CUDA {CUDA} compiler' in err.err


def test_without_a_compiler_a_cuda_build_falls_back_to_cpu_ops(
        build, capsys, monkeypatch):
    monkeypatch.setenv('FORCE_CUDA', '1')

    def missing(install=True):
        raise build.CompilerMissing('no CUDA compiler here')

    monkeypatch.setattr(build, 'find_cuda_home', missing)
    monkeypatch.setattr(sys, 'argv', ['build_mmcv.py', '--print-variant'])
    assert build.main() == 0
    out = capsys.readouterr()
    assert '-cpu-' in out.out
    warning = out.err.strip().splitlines()
    assert len(warning) == 1 and 'WARNING: CPU ops only' in warning[0]


def test_the_variant_names_the_cuda_version_and_arch_list(build, monkeypatch):
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '8.6;9.0+PTX')
    variant, use_cuda = build.build_variant(True)
    assert use_cuda and f'-cu{CUDA.replace(".", "")}-sm8_6_9_0_PTX-' in variant
    monkeypatch.delenv('TORCH_CUDA_ARCH_LIST')
    if not torch.cuda.is_available():  # the documented default list
        assert build.cuda_arch_list() == build.DEFAULT_CUDA_ARCH_LIST
    assert '-cpu-' in build.build_variant(False)[0]


KERNEL = r'''
#include <cuda_runtime.h>
__global__ void add_one(float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += 1.0f;
}
extern "C" int repnas_add_one(float* x, int n) {
  add_one<<<(n + 255) / 256, 256>>>(x, n);
  return static_cast<int>(cudaGetLastError());
}
'''

BUILD = '''
import sys
from torch.utils.cpp_extension import CUDA_HOME, load
print(CUDA_HOME)
load(name='repnas_tiny_kernel', sources=[sys.argv[1]],
     build_directory=sys.argv[2], is_python_module=False)
'''


def test_a_cuda_kernel_compiles_with_the_assembled_cuda_home(tmp_path):
    """torch.utils.cpp_extension with the CUDA_HOME --check-cuda gives (one
    arch; no GPU needed to compile)."""
    home = Path(sys.prefix) / f'cuda-{CUDA}'
    _load_build_mmcv().find_cuda_home(install=True)
    source = tmp_path / 'tiny.cu'
    source.write_text(KERNEL)
    build_dir = tmp_path / 'build'
    build_dir.mkdir()
    env = dict(os.environ, CUDA_HOME=str(home), TORCH_CUDA_ARCH_LIST='9.0',
               PATH=os.pathsep.join([str(Path(sys.executable).parent),
                                     os.environ.get('PATH', '')]))
    proc = subprocess.run([sys.executable, '-c', BUILD, source, build_dir],
                          env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0] == str(home)
    library = build_dir / 'repnas_tiny_kernel.so'
    symbols = subprocess.run(['nm', '-D', '--defined-only', library],
                             capture_output=True, text=True).stdout
    assert 'repnas_add_one' in symbols
    # Device code for the one arch asked for (ptxas's options ride along).
    device_code = (build_dir / 'tiny.cuda.o').read_bytes()
    assert b'-arch sm_90 ' in device_code and b'sm_80 ' not in device_code


def test_installed_says_whether_the_mmcv_here_has_the_wanted_ops(
        build, capsys, monkeypatch):
    """setup keeps an installed mmcv only if its ops are the flavour a build
    here would give (CPU ops, or CUDA ops where wanted and compilable)."""
    from mmcv.ops import get_compiling_cuda_version
    has_cuda = get_compiling_cuda_version() != 'not available'
    monkeypatch.setattr(build, 'find_cuda_home',
                        lambda install=True: (Path('/cuda'), CUDA))
    for wanted in (False, True):
        monkeypatch.setattr(build, 'cuda_wanted', lambda: wanted)
        assert build.installed_ok() == (0 if wanted == has_cuda else 1)
        line = capsys.readouterr().err.strip()
        assert len(line.splitlines()) == 1
        assert ('already installed' in line) == (wanted == has_cuda)
