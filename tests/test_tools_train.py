"""tools/train.py, tools/test.py and tools/dist_train.sh on real images.

Stock OpenMMLab configs (``mmpretrain::``, ``mmdet::``), adapted only in data
paths and schedule by the smoke configs in tests/configs/.
"""
import math

import pytest
import torch

from .conftest import (REPO, cls_data_options, det_data_options, read_scalars,
                       run_dist_train, run_tool)

CLS_CFG = REPO / 'tests' / 'configs' / 'resnet18_cifar10_tiny.py'
DET_CFG = REPO / 'tests' / 'configs' / 'centernet_r18_coco8.py'


@pytest.mark.slow
def test_train_image_classifier_one_iteration(tmp_path, cifar10_tiny):
    work = tmp_path / 'cls'
    run_tool('tools/train.py', CLS_CFG, '--work-dir', work, '--cfg-options',
             *cls_data_options(cifar10_tiny))
    scalars = read_scalars(work)
    losses = [s['loss'] for s in scalars if 'loss' in s]
    assert len(losses) == 1  # 16 images, batch 16: one iteration
    # Cross-entropy of a fresh 10-class classifier: near ln(10) = 2.30.
    assert math.isfinite(losses[0]) and 1.0 < losses[0] < 6.0
    accuracy = [s['accuracy/top1'] for s in scalars if 'accuracy/top1' in s]
    assert len(accuracy) == 1 and 0.0 <= accuracy[0] <= 100.0
    assert (work / 'epoch_1.pth').is_file()


@pytest.mark.slow
def test_train_centernet_one_iteration(tmp_path, coco8):
    work = tmp_path / 'det'
    run_tool('tools/train.py', DET_CFG, '--work-dir', work, '--cfg-options',
             *det_data_options(coco8))
    scalars = read_scalars(work)
    train = [s for s in scalars if 'loss' in s]
    assert len(train) == 1  # 4 images, batch 4: one iteration
    step = train[0]
    for key in ('loss_center_heatmap', 'loss_wh', 'loss_offset'):
        assert math.isfinite(step[key]) and step[key] > 0, (key, step)
    assert step['loss'] == pytest.approx(
        step['loss_center_heatmap'] + step['loss_wh'] + step['loss_offset'],
        rel=1e-4)
    # CocoMetric (pycocotools) ran on the val images.
    assert any('coco/bbox_mAP' in s for s in scalars)


@pytest.mark.slow
def test_test_tool_evaluates_a_state_dict_checkpoint(tmp_path, cifar10_tiny):
    """tools/test.py loads a plain state-dict checkpoint (the stock format)."""
    from mmengine.config import Config
    from mmpretrain.registry import MODELS
    import mmpretrain.models  # noqa: F401
    cfg = Config.fromfile(CLS_CFG)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    ckpt = tmp_path / 'resnet18.pth'
    torch.save({'meta': {'note': 'test'}, 'state_dict': model.state_dict()},
               ckpt)
    proc = run_tool('tools/test.py', CLS_CFG, ckpt, '--work-dir',
                    tmp_path / 'test', '--out', tmp_path / 'preds.pkl',
                    '--cfg-options', *cls_data_options(cifar10_tiny))
    assert 'accuracy/top1' in proc.stdout + proc.stderr
    assert (tmp_path / 'preds.pkl').is_file()


@pytest.mark.slow
def test_dist_train_two_cpu_processes(tmp_path, cifar10_tiny):
    """tools/dist_train.sh: torchrun, 2 processes, gloo on CPU."""
    work = tmp_path / 'dist'
    run_dist_train(CLS_CFG, 2, '--work-dir', work, '--cfg-options',
                   'train_dataloader.batch_size=8',
                   *cls_data_options(cifar10_tiny))
    scalars = read_scalars(work)
    losses = [s['loss'] for s in scalars if 'loss' in s]
    # 16 images over 2 ranks of batch 8: one iteration per rank.
    assert len(losses) == 1 and math.isfinite(losses[0])
    log = next(work.glob('*/*.log')).read_text()
    assert 'Distributed launcher: pytorch' in log
    assert 'Distributed training: True' in log


def test_train_tool_rejects_a_missing_config(tmp_path):
    proc = run_tool('tools/train.py', tmp_path / 'nope.py', check=False)
    assert proc.returncode != 0
    assert 'config file not found' in proc.stderr


@pytest.mark.slow
def test_train_tool_reports_a_bad_budget_in_one_line(tmp_path, cifar10_tiny):
    """The demo ODBBNet has 7 blocks and 44 legal branches."""
    cfg = REPO / 'tests' / 'configs' / 'odbb_cls_cifar10_tiny.py'
    for budget, text in (('99', 'budget 99 gives 99 branches'),
                         ('0.05', 'budget 0.05 gives 2 branches')):
        proc = run_tool('tools/train.py', cfg, '--work-dir', tmp_path,
                        '--cfg-options', f'custom_hooks.0.budget={budget}',
                        *cls_data_options(cifar10_tiny), check=False)
        assert proc.returncode == 1
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith('error: ') and text in last, last
        assert '[7, 44]' in last and 'Traceback' not in proc.stderr


@pytest.mark.slow
def test_a_config_with_a_syntax_error_gets_one_line_from_every_tool(
        tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text("model = dict(type='ImageClassifier'\nwork_dir = 'x'\n")
    child = tmp_path / 'child.py'  # inherits the broken one
    child.write_text(f"_base_ = '{bad}'\n")
    ckpt = tmp_path / 'any.pth'
    ckpt.write_bytes(b'')
    out = tmp_path / 'out'
    for args in (('tools/train.py', bad, '--work-dir', out),
                 ('tools/test.py', child, ckpt, '--work-dir', out),
                 ('tools/deploy.py', bad, ckpt, '--work-dir', out),
                 ('tools/compare_architectures.py', child, '--work-dir', out),
                 ('tools/benchmark_latency.py', bad, '--out-dir', out)):
        proc = run_tool(*args, check=False)
        assert proc.returncode == 1, (args[0], proc.stderr[-2000:])
        last = proc.stderr.strip().splitlines()[-1]
        assert last == f"error: syntax error in config {bad}, line 1: " \
            "'(' was never closed", (args[0], last)
        assert 'Traceback' not in proc.stderr, args[0]
        assert not out.exists(), args[0]
