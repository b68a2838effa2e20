"""repnas_mm installed as a package, not checked out (issue 30).

The slow test builds the wheel, installs it into a folder that shadows the
editable checkout, and works from an empty folder the way an OpenMMLab user
does: a config of their own inherits ``repnas_mm::``, ``mim train`` searches,
``mim test`` evaluates, ``mim run repnas_mm deploy --onnx`` exports through
mmdeploy (SDK check included) and ``mim run repnas_mm compare_architectures``
runs a two-run comparison. An audit hook in every process records each file
opened under the checkout: nothing may be.
"""
import ast
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from .conftest import REPO

TOOLS = REPO / 'repnas_mm' / 'tools'

# Loaded by every Python process of the test (sitecustomize on PYTHONPATH):
# logs each file opened under the checkout, except the interpreter's
# environment (a .venv inside the checkout).
AUDIT = '''
import os, sys
_ROOT = os.path.realpath(os.environ['REPNAS_AUDIT_ROOT']) + os.sep
_ENV = os.path.realpath(sys.prefix) + os.sep
_LOG = os.environ['REPNAS_AUDIT_LOG']


def _hook(event, args):
    if event != 'open' or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.path.realpath(os.fsdecode(args[0]))
    if path.startswith(_ROOT) and not path.startswith(_ENV):
        with open(_LOG, 'a') as f:  # not under the checkout
            f.write(path + '\\n')


sys.addaudithook(_hook)
'''

USER_CONFIG = '''# A user's own config: the demo's search, on their data, shortened.
_base_ = 'repnas_mm::demo/odbb_fmnist_cls.py'

data_root = 'cifar10_tiny'
train_dataloader = dict(batch_size=16, dataset=dict(
    data_root=data_root, indices=list(range(0, 160, 10))))
val_dataloader = dict(dataset=dict(data_root=data_root,
                                   indices=list(range(0, 60, 2))))
test_dataloader = dict(dataset=dict(data_root=data_root, data_prefix='val',
                                    indices=list(range(0, 60, 2))))
max_epochs = 1
custom_hooks = [dict(_base_.repnas_hook, budget=0.5, warmup_epochs=0,
                     fix_epoch=1)]
param_scheduler = dict(T_max=max_epochs, begin=0, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(logger=dict(interval=1))
'''


def _run(cmd, cwd, env, timeout=600):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (cmd, (proc.stdout + proc.stderr)[-3000:])
    return proc.stdout


@pytest.mark.slow
def test_the_wheel_works_from_any_folder_through_mim(tmp_path):
    wheels, target, user = (tmp_path / d for d in ('wheel', 'site', 'user'))
    py = sys.executable
    # Built from a copy of the tree, as from a clone: an in-place build
    # would leave build/ and an egg-info in the checkout.
    source = tmp_path / 'source'
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        '.git', '.venv', 'work_dirs', 'data', 'build', '*.egg-info',
        '__pycache__', '.pytest_cache'))
    _run([py, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
          '-q', source, '-w', wheels], source, dict(os.environ))
    wheel, = wheels.glob('repnas_mm-*.whl')
    _run([py, '-m', 'pip', 'install', '--no-deps', '-q', '--target', target,
          wheel], tmp_path, dict(os.environ))
    probe = tmp_path / 'probe'
    probe.mkdir()
    (probe / 'sitecustomize.py').write_text(AUDIT)
    user.mkdir()
    shutil.copytree(REPO / 'tests' / 'data' / 'cifar10_tiny',
                    user / 'cifar10_tiny')
    (user / 'my_search.py').write_text(USER_CONFIG)
    opened = tmp_path / 'opened.txt'
    env = dict(os.environ, PYTHONPATH=f'{target}{os.pathsep}{probe}',
               REPNAS_AUDIT_ROOT=str(REPO), REPNAS_AUDIT_LOG=str(opened))
    mim = Path(py).parent / 'mim'
    # The hook sees a read from the checkout (and this one is allowed).
    _run([py, '-c', f'open({str(REPO / "README.md")!r}).close()'], user, env)
    assert opened.read_text() == f'{REPO / "README.md"}\n'
    opened.unlink()

    out = _run([py, '-c', 'import repnas_mm; print(repnas_mm.__file__)'],
               user, env)
    assert out.strip().endswith(str(target / 'repnas_mm' / '__init__.py'))
    _run([mim, 'train', 'repnas_mm', 'my_search.py', '--work-dir', 'work'],
         user, env)
    arch = json.loads((user / 'work' / 'searched_arch.json').read_text())
    assert arch['num_branches'] == arch['budget'] == 22
    dumped = (user / 'work' / 'my_search.py').read_text()
    assert "_scope_='repnas_mm'" not in dumped  # our modules build as ours
    _run([mim, 'test', 'repnas_mm', 'my_search.py', '--checkpoint',
          'work/epoch_1.pth', '--work-dir', 'tested'], user, env)
    top1, = [json.loads(p.read_text())['accuracy/top1']
             for p in (user / 'tested').glob('*/*.json')]
    assert 0 <= top1 <= 100

    _run([mim, 'run', 'repnas_mm', 'deploy', 'my_search.py',
                'work/epoch_1.pth', '--work-dir', 'deployed', '--onnx'],
               user, env)
    result = json.loads((user / 'deployed' / 'deploy_result.json')
                        .read_text())
    assert result['fused_error'] < 1e-4
    assert result['onnxruntime_error'] < 1e-4
    assert result['sdk_error'] < 1e-4  # mmdeploy's SDK ran the folder
    for name in ('end2end.onnx', 'pipeline.json', 'deploy.json'):
        assert (user / 'deployed' / name).is_file(), name

    _run([mim, 'run', 'repnas_mm', 'compare_architectures', 'my_search.py',
          '--work-dir', 'compared', '--methods', 'repnas', 'plain',
          '--seeds', '0'], user, env)
    results = json.loads((user / 'compared' / 'results.json').read_text())
    assert [(r['method'], r['seed']) for r in results['runs']] == [
        ('repnas', 0), ('plain', 0)]
    assert [r['branches'] for r in results['runs']] == [22, 7]
    # The command a reader retypes where the study ran (no checkout there).
    assert results['command'].startswith(
        'python -m repnas_mm.tools.compare_architectures my_search.py')
    _run([py, '-m', 'repnas_mm.tools.collect_env', '--check'], user, env)

    assert opened.exists() is False or not opened.read_text(), (
        'read from the checkout: ' + opened.read_text()[:2000])
    assert not (user / 'tools').exists() and not (user / 'configs').exists()


def test_tools_use_only_the_public_api():
    """No tool imports a private name (``_x``) of the library, or another
    tool through ``sys.path`` (what tools share is public API)."""
    for path in sorted(TOOLS.glob('*.py')):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (
                    node.module or '').startswith('repnas_mm'):
                private = [a.name for a in node.names
                           if a.name.startswith('_')]
                assert not private, (path.name, node.module, private)
                assert not node.module.startswith('repnas_mm.tools'), (
                    path.name, node.module)
            if isinstance(node, ast.Attribute) and node.attr == 'path' and \
                    isinstance(node.value, ast.Name) and \
                    node.value.id == 'sys':
                raise AssertionError(f'{path.name} changes sys.path')


def test_every_tool_runs_as_a_module_and_the_checkout_links_to_it():
    """``tools/`` of the checkout, ``repnas_mm/.mim/tools`` (what mim
    runs) and ``python -m repnas_mm.tools.<name>`` are the same files."""
    assert (REPO / 'tools').resolve() == TOOLS
    mim = REPO / 'repnas_mm' / '.mim'
    assert (mim / 'tools').resolve() == TOOLS
    assert (mim / 'configs').resolve() == REPO / 'configs'
    assert (mim / 'datasets').resolve() == REPO / 'datasets'
    names = sorted(p.stem for p in TOOLS.glob('*.py') if p.stem[0] != '_')
    assert {'train', 'test', 'deploy', 'compare_architectures', 'demo',
            'prepare_demo_data'} <= set(names)
    out = subprocess.run(
        [sys.executable, '-m', 'repnas_mm.tools.deploy', '--help'],
        cwd='/', capture_output=True, text=True)
    assert out.returncode == 0 and '--onnx' in out.stdout, out.stderr[-500:]


def test_mim_finds_every_shipped_config_by_name():
    """``mim train repnas_mm NAME.py`` looks a config up by its file name
    anywhere under the package: every name must be unique there."""
    configs = list((REPO / 'configs').rglob('*.py'))
    package = [p for p in (REPO / 'repnas_mm').rglob('*.py')
               if '.mim' not in p.parts]
    counts = Counter(p.name for p in configs + package)
    clashes = [p for p in configs if counts[p.name] > 1
               and '_base_' not in p.parts]
    assert not clashes, clashes


def test_repnas_mm_scope_loads_or_says_why(tmp_path):
    """``_base_ = 'repnas_mm::...'`` reads the installed package. In this
    environment's install mode it either loads, or (editable: the package
    stays in the checkout, where mmengine does not look) says so in one
    line. Run from an empty folder, so the checkout is not on sys.path."""
    (tmp_path / 'mine.py').write_text(
        "_base_ = 'repnas_mm::demo/odbb_fmnist_cls.py'\n")
    script = """
import json, os
from mmengine.utils import get_installed_path
from repnas_mm.config import read_config
from repnas_mm.errors import UserError
installed = os.path.isdir(os.path.join(get_installed_path('repnas_mm'), '.mim'))
try:
    cfg = read_config('mine.py')
    out = dict(backbone=cfg.model.backbone.type,
               scoped='_scope_' in cfg.model.backbone)
except UserError as exc:
    out = dict(error=str(exc))
print(json.dumps(dict(out, installed=installed)))
"""
    proc = subprocess.run([sys.executable, '-c', script], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out['installed']:
        assert out == dict(backbone='ODBBNet', scoped=False, installed=True)
    else:
        assert 'editable install' in out['error'], out
