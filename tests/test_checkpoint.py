"""Checkpoints under torch 2.14: resume and load work, and never run code."""
import functools
import http.server
import threading

import pytest
import torch

import repnas_mm  # noqa: F401  (installs the safe checkpoint loaders)

from .conftest import REPO, read_scalars, run_tool
from .conftest import cls_data_options, det_data_options
from .test_tools_train import CLS_CFG

ODBB_DET_CFG = REPO / 'tests' / 'configs' / 'centernet_odbb_coco8.py'


class _WritesMarker:
    """Unpickling this opens (creates) a file: the code-execution probe."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, 'w'))


def crafted_checkpoint(path, marker):
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'x': _WritesMarker(marker)},
               path)
    return path


@pytest.fixture
def odbb_classifier_ckpt(searched_classifier):
    """A classification checkpoint written by tools/train.py (a search)."""
    return searched_classifier / 'epoch_2.pth'


@pytest.mark.slow
def test_our_checkpoints_are_plain_data(odbb_classifier_ckpt):
    assert torch.serialization.get_unsafe_globals_in_checkpoint(
        str(odbb_classifier_ckpt)) == []
    raw = torch.load(odbb_classifier_ckpt, weights_only=True)  # no allow-list
    assert {'meta', 'state_dict', 'message_hub', 'optimizer'} <= set(raw)
    from mmengine.logging import HistoryBuffer
    from mmengine.runner.checkpoint import CheckpointLoader
    loaded = CheckpointLoader.load_checkpoint(str(odbb_classifier_ckpt))
    loss = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(loss, HistoryBuffer)
    assert loss.data[0].shape == (8, )  # 4 iterations in each of 2 epochs
    # The real losses, decoded: the first is the one the run logged.
    logged = [s['loss'] for s in read_scalars(odbb_classifier_ckpt.parent)
              if 'loss' in s]
    assert loss.data[0][0] == pytest.approx(logged[0], abs=1e-4)
    assert all(0 < v < 100 for v in loss.data[0])


@pytest.mark.slow
def test_resume_continues_from_the_saved_iteration(tmp_path, cifar10_tiny):
    work = tmp_path / 'resume'
    probe = tmp_path / 'probe.pth'
    cfg = tmp_path / 'resume_cfg.py'
    cfg.write_text(
        f"_base_ = '{CLS_CFG}'\n"
        "custom_imports = dict(imports=['tests.probes'])\n"
        f"custom_hooks = [dict(type='ResumeProbeHook', out='{probe}')]\n"
        "train_dataloader = dict(\n"
        "    batch_size=8, dataset=dict(indices=list(range(0, 160, 5))))\n")
    common = cls_data_options(cifar10_tiny)
    env = {'PYTHONPATH': str(REPO)}
    run_tool('tools/train.py', cfg, '--work-dir', work, '--cfg-options',
             'train_cfg.max_epochs=1', *common, env=env)
    saved = torch.load(work / 'epoch_1.pth', weights_only=True)
    assert saved['meta']['iter'] == 4 and saved['meta']['epoch'] == 1

    # "Stopped" after epoch 1; now resume to epoch 2.
    run_tool('tools/train.py', cfg, '--work-dir', work, '--resume',
             '--cfg-options', 'train_cfg.max_epochs=2', *common, env=env)
    resumed = torch.load(probe, weights_only=True)
    assert resumed['iter'] == 4 and resumed['epoch'] == 1
    state_saved = saved['optimizer']['state']
    state_resumed = resumed['optimizer']['state']
    assert state_saved.keys() == state_resumed.keys() and state_saved
    for key in state_saved:
        assert torch.equal(state_saved[key]['momentum_buffer'],
                           state_resumed[key]['momentum_buffer'])
    assert saved['optimizer']['param_groups'][0]['lr'] == pytest.approx(
        resumed['optimizer']['param_groups'][0]['lr'])
    steps = [s['step'] for s in read_scalars(work) if 'loss' in s]
    assert steps == [5, 6, 7, 8]  # iterations 5..8 of the resumed run


@pytest.mark.slow
def test_pretrained_init_loads_classifier_into_detector_backbone(
        odbb_classifier_ckpt):
    """init_cfg=Pretrained (prefix backbone.) from our classifier run."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    cfg = Config.fromfile(ODBB_DET_CFG)
    cfg.model.backbone.init_cfg = dict(
        type='Pretrained', checkpoint=str(odbb_classifier_ckpt),
        prefix='backbone.')
    detector = MODELS.build(cfg.model)
    detector.init_weights()
    source = torch.load(odbb_classifier_ckpt, weights_only=True)['state_dict']
    backbone = detector.backbone.state_dict()
    assert len(backbone) > 100
    for key, value in backbone.items():
        assert torch.equal(value, source['backbone.' + key]), key


@pytest.mark.slow
def test_load_from_puts_classifier_weights_into_detector(
        tmp_path, odbb_classifier_ckpt, coco8):
    """load_from (tools/test.py CHECKPOINT): backbone keys all match."""
    proc = run_tool('tools/test.py', ODBB_DET_CFG, odbb_classifier_ckpt,
                    '--work-dir', tmp_path, '--cfg-options',
                    *det_data_options(coco8))
    log = proc.stdout + proc.stderr
    assert f'Load checkpoint from {odbb_classifier_ckpt}' in log
    missing = log.split('missing keys in source state_dict:')[1].split('\n')[0]
    assert 'neck.' in missing and 'bbox_head.' in missing
    assert 'backbone.' not in missing  # every backbone weight was loaded
    assert 'coco/bbox_mAP' in log


def test_crafted_checkpoint_is_refused_by_the_loader(tmp_path, monkeypatch):
    from mmengine.runner.checkpoint import CheckpointLoader
    from repnas_mm.checkpoint import UnsafeCheckpointError
    monkeypatch.delenv('REPNAS_ALLOW_UNSAFE_CHECKPOINTS', raising=False)
    marker = tmp_path / 'pwned'
    ckpt = crafted_checkpoint(tmp_path / 'evil.pth', marker)
    with pytest.raises(UnsafeCheckpointError) as err:
        CheckpointLoader.load_checkpoint(str(ckpt))
    message = str(err.value)
    assert '\n' not in message and str(ckpt) in message
    assert 'io.open' in message  # what the file would have called
    assert 'allow_unsafe_checkpoints' in message
    assert 'REPNAS_ALLOW_UNSAFE_CHECKPOINTS' in message
    assert not marker.exists()


def test_crafted_checkpoint_is_refused_by_the_tools(tmp_path):
    marker = tmp_path / 'pwned'
    ckpt = crafted_checkpoint(tmp_path / 'evil.pth', marker)
    proc = run_tool('tools/test.py', CLS_CFG, ckpt, '--work-dir',
                    tmp_path / 'w', check=False,
                    env={'REPNAS_ALLOW_UNSAFE_CHECKPOINTS': ''})
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: refusing to load {ckpt}')
    assert 'Traceback' not in proc.stderr
    assert not marker.exists()


def test_config_key_opts_in_for_the_tools(tmp_path, cifar10_tiny):
    marker = tmp_path / 'ran'
    ckpt = crafted_checkpoint(tmp_path / 'mine.pth', marker)
    proc = run_tool('tools/test.py', CLS_CFG, ckpt, '--work-dir',
                    tmp_path / 'w', '--cfg-options',
                    'allow_unsafe_checkpoints=True',
                    'test_dataloader.dataset.indices=8',
                    *cls_data_options(cifar10_tiny), check=False,
                    env={'REPNAS_ALLOW_UNSAFE_CHECKPOINTS': ''})
    assert 'UNSAFELY' in proc.stdout + proc.stderr
    assert marker.exists()


def test_opt_in_loads_unsafely_with_a_warning(tmp_path, monkeypatch):
    import logging
    from mmengine.logging import MMLogger
    from mmengine.runner.checkpoint import CheckpointLoader
    monkeypatch.setenv('REPNAS_ALLOW_UNSAFE_CHECKPOINTS', '1')
    marker = tmp_path / 'ran'
    ckpt = crafted_checkpoint(tmp_path / 'trusted.pth', marker)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        loaded = CheckpointLoader.load_checkpoint(str(ckpt))
    finally:
        logger.removeHandler(handler)
    assert torch.equal(loaded['state_dict']['w'], torch.zeros(1))
    assert marker.exists()  # the opt-in really means "run its code"
    warnings = [r.getMessage() for r in records
                if r.levelno == logging.WARNING]
    assert any('UNSAFELY' in m and str(ckpt) in m for m in warnings)


def test_http_checkpoints_load_safely(tmp_path, monkeypatch):
    """mmengine's http loader unpickled anything; ours does not."""
    from mmengine.runner.checkpoint import CheckpointLoader
    from repnas_mm.checkpoint import UnsafeCheckpointError
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.delenv('REPNAS_ALLOW_UNSAFE_CHECKPOINTS', raising=False)
    served = tmp_path / 'served'
    served.mkdir()
    torch.save({'state_dict': {'w': torch.arange(3.)}}, served / 'good.pth')
    marker = tmp_path / 'pwned'
    crafted_checkpoint(served / 'evil.pth', marker)
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f'http://127.0.0.1:{server.server_address[1]}'
    try:
        good = CheckpointLoader.load_checkpoint(f'{base}/good.pth')
        assert torch.equal(good['state_dict']['w'], torch.arange(3.))
        with pytest.raises(UnsafeCheckpointError):
            CheckpointLoader.load_checkpoint(f'{base}/evil.pth')
        assert not marker.exists()
    finally:
        server.shutdown()


def test_convert_checkpoint_needs_trust_and_writes_plain_data(tmp_path):
    from mmengine.logging import HistoryBuffer
    legacy = tmp_path / 'legacy.pth'
    torch.save(
        {
            'state_dict': {'w': torch.ones(2)},
            'message_hub': {'log_scalars': {
                'loss': HistoryBuffer([1.0, 0.5], [1, 1])}},
        }, legacy)
    out = tmp_path / 'safe.pth'
    proc = run_tool('tools/convert_checkpoint.py', legacy, out, check=False,
                    env={'REPNAS_ALLOW_UNSAFE_CHECKPOINTS': ''})
    assert proc.returncode != 0 and 'pass --trust' in proc.stderr
    assert not out.exists()
    run_tool('tools/convert_checkpoint.py', legacy, out, '--trust')
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(out)) == []
    from mmengine.runner.checkpoint import CheckpointLoader
    back = CheckpointLoader.load_checkpoint(str(out))
    assert back['message_hub']['log_scalars']['loss'].data[0].tolist() == [
        1.0, 0.5]
    assert not list(tmp_path.glob('*.part'))


def test_unreadable_files_are_one_clear_error(tmp_path):
    """Truncated, empty or foreign files: a CheckpointError naming the file
    (tools print it in one line), whatever torch's reader raised."""
    from repnas_mm.checkpoint import CheckpointError, load_checkpoint_safely
    whole = tmp_path / 'whole.pth'
    torch.save({'state_dict': {'w': torch.randn(64, 64)}}, whole)
    data = whole.read_bytes()
    cases = {'half.pth': data[:len(data) // 2], 'head.pth': data[:100],
             'empty.pth': b'', 'text.pth': b'hello world' * 10}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError,
                           match=f'cannot read checkpoint .*{name}'):
            load_checkpoint_safely(str(path))
    assert set(load_checkpoint_safely(str(whole))) == {'state_dict'}


def test_one_reader_of_the_architecture_a_run_recorded(tmp_path):
    """RepNAS and DyRep checkpoints record the kept branches differently;
    ``recorded_architecture`` reads both into one format, and an ODBBNet
    builds from either file."""
    from repnas_mm.checkpoint import (architecture_in_checkpoint,
                                      kept_branches, recorded_architecture)
    from repnas_mm.models import ODBBNet
    arch = dict(stem_channels=8, channels=(8, 16), num_blocks=(1, 1),
                strides=(2, 2))
    kept = {'stem.conv': ['kxk'], 'stage_1.0.conv': ['1x1', 'kxk'],
            'stage_2.0.conv': ['kxk', '1x1_avg']}
    repnas = {'repnas': {'architecture': {'arch': None, 'blocks': [
        dict(name=n, branches=b, alpha={}) for n, b in kept.items()]}}}
    dyrep = {'dyrep': {'structure': [[n, b] for n, b in kept.items()]}}
    for name, ckpt in (('repnas', repnas), ('dyrep', dyrep)):
        assert kept_branches(ckpt) == kept, name
        path = tmp_path / f'{name}.pth'
        torch.save(ckpt, path)
        assert architecture_in_checkpoint(path) == recorded_architecture(ckpt)
        net = ODBBNet(arch, branches=str(path))
        assert [list(b.branch_names) for b in net.blocks()] == list(
            kept.values()), name
    assert kept_branches({'state_dict': {}}) is None
    torch.save({'state_dict': {}}, tmp_path / 'plain.pth')
    with pytest.raises(ValueError, match='plain.pth carries no searched'):
        architecture_in_checkpoint(tmp_path / 'plain.pth')
