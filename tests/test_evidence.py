"""Committed results are portable: no machine paths, the evidence a clone can
re-run (repnas_mm.evidence, tools/publish_results.py)."""
import json
import os
import subprocess

from repnas_mm.evidence import machine_paths, portable, publish, this_machine

from .conftest import REPO, run_tool

BINARY = ('.png', '.jpg', '.jpeg', '.gz', '.pth', '.onnx', '.whl')


def _tracked_files():
    """The repository's files: git's list in a checkout, else a walk that
    skips what is never tracked (environments, outputs, data)."""
    try:
        out = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, check=True,
                             capture_output=True).stdout
        return [REPO / p for p in out.decode().split('\0') if p]
    except (OSError, subprocess.CalledProcessError):
        skip = {'.git', '.venv', 'work_dirs', 'data', '__pycache__',
                '.pytest_cache', 'build', 'dist'}
        found = []
        for root, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in skip
                       and not d.endswith('.egg-info')]
            found += [REPO / root / f for f in files]
        return found


def test_no_tracked_file_holds_a_machine_path():
    """A home, work or temp directory of a machine in any tracked file
    (committed configs, logs and results included) fails, naming it."""
    extra = this_machine() + [str(REPO)]
    offenders = {}
    for path in _tracked_files():
        if path.suffix in BINARY or not path.is_file():
            continue
        try:
            text = path.read_text(encoding='utf-8')
        except UnicodeDecodeError:
            continue
        found = machine_paths(text, extra)
        if found:
            offenders[str(path.relative_to(REPO))] = found[0]
    assert not offenders, (f'{len(offenders)} files hold machine paths, '
                           f'e.g. {list(offenders.items())[:5]}')


def test_machine_paths_finds_them_and_only_them():
    # Built from parts, so that this file holds no machine path itself.
    work, home, tmp = ('/' + 'work/main/data/x', '/' + 'home/ann/runs/a.log',
                       '/' + 'tmp/pytest-1/x')
    text = (f"data_root='{work}' log {home} tmp={tmp} "
            "ok=/usr/share/datasets/fashion-mnist "
            "CXX_COMPILER=/opt/rh/gcc-toolset-13/root/usr/bin/c++ "
            "relative=work_dirs/demo")
    assert machine_paths(text) == [work, home, tmp]
    assert machine_paths('at /srv/me/x', ['/srv/me/']) == ['/srv/me/']
    assert machine_paths('at /data/srv/me/x', ['/srv/me/']) == []


def test_portable_makes_paths_relative(tmp_path):
    root = str(tmp_path / 'repo')
    text = (f'$ {root}/.venv/bin/python {root}/tools/train.py cfg.py\n'
            f"data_root='/data/cifar_mini'\n"
            f'saved to {root}/work_dirs/a/epoch_1.pth\n'
            f'cwd {root}\n'
            f'other {root}_backup/x and /usr/share/x\n')
    out = portable(text, root, [('/data/cifar_mini', 'data/cifar10_subset')])
    assert out == ('$ python tools/train.py cfg.py\n'
                   "data_root='data/cifar10_subset'\n"
                   'saved to work_dirs/a/epoch_1.pth\n'
                   'cwd .\n'
                   f'other {root}_backup/x and /usr/share/x\n')


def test_publish_keeps_the_evidence_and_drops_the_rest(tmp_path):
    work, out = tmp_path / 'work', tmp_path / 'out'
    run = work / 'runs' / 'repnas' / 'seed_0'
    (run / 'train').mkdir(parents=True)
    (work / 'results.json').write_text(json.dumps(
        dict(config='configs/x.py', command=f'python {work}/t.py')))
    (work / 'results.md').write_text('table')
    (run / 'result.json').write_text(json.dumps(
        dict(checkpoint=f'{work}/runs/repnas/seed_0/train/epoch_1.pth')))
    (run / 'train.log').write_text(f'saved to {work}/runs\n')
    (run / 'config.py').write_text(f"work_dir = '{work}'\n")
    (run / 'train' / 'searched_arch.json').write_text('{}')
    (run / 'train' / 'epoch_1.pth').write_bytes(b'x')
    deployed = work / 'deploy'  # a deployment: its result and INT8 table
    deployed.mkdir()
    (deployed / 'deploy_result.json').write_text(json.dumps(
        dict(onnx=f'{deployed}/end2end.onnx')))
    (deployed / 'int8.md').write_text('int8 table')
    (deployed / 'end2end.onnx').write_bytes(b'x')
    written = publish(str(work), str(out),
                      aliases=[(str(work), 'work_dirs/study')])
    assert sorted(os.path.relpath(p, out) for p in written) == [
        'deploy/deploy_result.json', 'deploy/int8.md',
        'results.json', 'results.md', 'runs/repnas/seed_0/result.json',
        'runs/repnas/seed_0/searched_arch.json', 'runs/repnas/seed_0/train.log']
    result = json.loads((out / 'runs/repnas/seed_0/result.json').read_text())
    assert result['checkpoint'] == \
        'work_dirs/study/runs/repnas/seed_0/train/epoch_1.pth'
    # The tool refuses to leave a machine path behind, in one line.
    refused = run_tool('tools/publish_results.py', work, tmp_path / 'out2',
                       check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().count('\n') == 0
    assert 'still holds a machine path' in refused.stderr
    assert '--alias' in refused.stderr
    assert not (tmp_path / 'out2').exists()  # nothing half-written


def test_the_cifar10_subset_ships_and_unpacks_with_a_held_out_split(
        tmp_path):
    """Every CIFAR-10-subset command in docs starts from the archive in
    datasets/: 2,700 / 600 / 300 real images, test disjoint from train."""
    import hashlib
    from repnas_mm import demo_data
    from repnas_mm.resources import dataset_path
    archive = REPO / 'datasets' / 'cifar10_subset.tar.gz'
    assert dataset_path(demo_data.CIFAR10_ARCHIVE) == str(archive.resolve())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert digest in (REPO / 'datasets' / 'README.md').read_text()
    out = tmp_path / 'cifar10_subset'
    counts = demo_data.write_cifar10_subset(str(archive), str(out))
    assert counts == dict(train=2700, val=600, test=300)
    for cls in ('airplane', 'truck'):
        names = {split: {p.name for p in (out / split / cls).iterdir()}
                 for split in ('train', 'val', 'test')}
        assert len(names['test']) == 30 and len(names['train']) == 270
        assert not names['test'] & names['train']
    # A second call with the same settings reuses the folder.
    assert demo_data.write_cifar10_subset(str(archive), str(out)) is None
    # The configs read it from the path the tool writes by default.
    from mmengine.config import Config
    cfg = Config.fromfile(REPO / 'configs' / 'demo' /
                          'odbb_cifar10_subset_cls.py')
    assert {cfg[f'{s}_dataloader'].dataset.data_root
            for s in ('train', 'val', 'test')} == {'data/cifar10_subset'}
    assert [cfg[f'{s}_dataloader'].dataset.data_prefix
            for s in ('train', 'val', 'test')] == ['train', 'val', 'test']
