"""tools/deploy.py: fuse, verify on real images, export, interop, bad inputs."""
import json

import pytest
import torch

import repnas_mm  # noqa: F401
from repnas_mm.deploy import ExportOptions, VerifyOptions, deploy
from repnas_mm.deploy.model import build_model
from repnas_mm.rep import random_architecture
from repnas_mm.rep.arch import Architecture, save_arch

from .conftest import REPO, cls_data_options, run_tool
from .equivalence import randomize_bn

A0_CFG = REPO / 'configs' / 'odbb_a0_imagenet.py'
DET_CFG = REPO / 'configs' / 'centernet_odbb_a0_nodcn_coco.py'
DCN_CFG = REPO / 'configs' / 'centernet_odbb_a0_coco.py'
DEPLOY_CFGS = REPO / 'configs' / 'deploy'
SEARCH_CFG = REPO / 'tests' / 'configs' / 'odbb_cls_cifar10_tiny.py'


def trained_checkpoint(cfg_path, path, searched=False, seed=0):
    """A checkpoint of the config's model with random BN statistics.

    With ``searched=True`` it carries a random searched architecture (as a
    RepNAS run's checkpoint does) under RepVGG-A0's budget.
    """
    from mmengine.config import Config
    from repnas_mm.search import SearchSpace
    torch.manual_seed(seed)
    model = build_model(Config.fromfile(cfg_path))
    randomize_bn(model, seed=seed)
    checkpoint = {'meta': {}, 'state_dict': model.state_dict()}
    if searched:
        space = SearchSpace(model)
        legal = [b.branch_names for b in space.blocks]
        arch = Architecture('A0', random_architecture(legal, 66, seed),
                            names=space.block_names, budget=66)
        checkpoint['repnas'] = {'architecture': arch.to_dict()}
    torch.save(checkpoint, path)
    return path


def val_images(root):
    return [str(root / 'val' / c) for c in ('cat', 'ship')]


def assert_sdk_folder(out, codebase):
    """mmdeploy's export2SDK files, and no temporary folder left."""
    for name in ('end2end.onnx', 'deploy.json', 'pipeline.json',
                 'detail.json'):
        assert (out / name).is_file(), name
    detail = json.loads((out / 'detail.json').read_text())
    assert detail['codebase']['codebase'] == codebase
    assert detail['onnx_config']['opset_version'] == 17
    tasks = json.loads((out / 'pipeline.json').read_text())['pipeline'][
        'tasks']
    sdk_codebase = {'mmpretrain': 'mmcls'}.get(codebase, codebase)
    assert [t['module'] for t in tasks] == ['Transform', 'Net', sdk_codebase]
    assert not list(out.glob('.mmdeploy-*')) and not list(out.glob('*.part'))
    return detail


@pytest.mark.slow
@pytest.mark.parametrize('searched,deploy_cfg', [
    (False, None),
    (True, 'classification_onnxruntime_static.py'),
], ids=['full-dynamic', 'searched-static'])
def test_classifier_deploy_exports_through_mmdeploy(tmp_path, cifar10_tiny,
                                                    searched, deploy_cfg):
    ckpt = trained_checkpoint(A0_CFG, tmp_path / 'a0.pth', searched)
    result = deploy(str(A0_CFG), str(ckpt), str(tmp_path / 'out'),
                    VerifyOptions(val_images(cifar10_tiny), 2),
                    export=ExportOptions(deploy_cfg and str(DEPLOY_CFGS / deploy_cfg)))
    assert result['images'] == 2 and result['fused_error'] <= 1e-4
    # mmdeploy's ONNX Runtime backend and its SDK, on the real images.
    assert result['onnxruntime_error'] <= 1e-3
    assert result['sdk_error'] <= 1e-3
    out = tmp_path / 'out'
    detail = assert_sdk_folder(out, 'mmpretrain')
    if deploy_cfg:
        assert detail['onnx_config']['input_shape'] == [224, 224]
    else:
        assert detail['onnx_config']['dynamic_axes']['input'] == {
            '0': 'batch'}
    for name in ('odbb_a0_imagenet_fused.pth', 'odbb_a0_imagenet_deploy.py'):
        assert (out / name).is_file(), name
    # The deploy config records the kept branches of every block.
    from mmengine.config import Config
    backbone = Config.fromfile(out / 'odbb_a0_imagenet_deploy.py') \
        .model.backbone
    assert backbone.deploy is True
    kept = sum(len(b) for b in backbone.branches)
    assert kept == (66 if searched else 149)


@pytest.mark.slow
def test_detector_deploy_exports_through_mmdeploy(tmp_path, coco8):
    from repnas_mm.models import ODBBNet
    legal = [b.branch_names
             for b in ODBBNet('A0', branches='full', deploy=True).blocks()]
    arch = tmp_path / 'searched_arch.json'
    save_arch(Architecture('A0', random_architecture(legal, 66, 0)), arch)
    cfg = tmp_path / 'det.py'
    cfg.write_text(f"_base_ = '{DET_CFG}'\n"
                   f"model = dict(backbone=dict(branches='{arch}', "
                   "init_cfg=None))\n")
    ckpt = trained_checkpoint(cfg, tmp_path / 'det.pth')
    result = deploy(str(cfg), str(ckpt), str(tmp_path / 'out'),
                    VerifyOptions([str(coco8 / 'val')], 2), export=True)
    assert result['fused_error'] <= 1e-4
    # Top-10 detections: same labels, boxes and scores within 1e-3.
    assert result['onnxruntime_error'] <= 1e-3
    assert result['sdk_error'] <= 1e-3
    detail = assert_sdk_folder(tmp_path / 'out', 'mmdet')
    assert detail['codebase']['task'] == 'ObjectDetection'
    assert detail['onnx_config']['output_names'] == ['dets', 'labels']


@pytest.mark.slow
def test_mmdeploy_fuses_a_search_checkpoint_itself(tmp_path, cifar10_tiny):
    """mmdeploy's own path (build_pytorch_model, torch2onnx), handed the
    training-time config and an unfused RepNAS checkpoint, gets the searched
    network: its blocks fuse the kept branches only (one Conv each in the
    graph) and compute what tools/deploy.py's fused model computes."""
    import onnx
    from mmdeploy.apis import torch2onnx
    from mmdeploy.apis.utils import build_task_processor
    from mmdeploy.utils import load_config
    from repnas_mm.config import read_config
    from repnas_mm.deploy.mmdeploy_export import \
        torchscript_exporter_by_default
    from repnas_mm.deploy.model import load_for_deploy
    from repnas_mm.deploy.verify import (collect_batches, model_inputs,
                                         raw_outputs, relative_error)
    from repnas_mm.rep import named_odbbs, reparameterize_model
    work = tmp_path / 'search'
    run_tool('tools/train.py', SEARCH_CFG, '--work-dir', work,
             '--cfg-options', 'train_cfg.max_epochs=1',
             *cls_data_options(cifar10_tiny))
    ckpt = str(work / 'epoch_1.pth')
    searched = {
        b['name']: tuple(b['branches'])
        for b in torch.load(ckpt, weights_only=False)['repnas'][
            'architecture']['blocks']
    }
    assert sum(len(b) for b in searched.values()) == 22  # of 44 built
    deploy_cfg, model_cfg = load_config(
        str(DEPLOY_CFGS / 'classification_onnxruntime_dynamic.py'),
        str(SEARCH_CFG))
    task = build_task_processor(model_cfg, deploy_cfg, 'cpu')
    theirs = task.build_pytorch_model(ckpt)
    blocks = named_odbbs(theirs)
    assert not named_odbbs(theirs, fused=False)
    assert {n: b.branch_names for n, b in blocks.items()} == searched
    ours, _ = load_for_deploy(read_config(str(SEARCH_CFG)), ckpt)
    reparameterize_model(ours)
    batches = collect_batches(read_config(str(SEARCH_CFG)),
                              val_images(cifar10_tiny), 2)
    inputs = [model_inputs(ours, b) for b in batches]
    assert relative_error(
        [t for x in inputs for t in raw_outputs(theirs, x)],
        [t for x in inputs for t in raw_outputs(ours, x)]) <= 1e-6
    image = str(next((cifar10_tiny / 'val' / 'cat').iterdir()))
    with torchscript_exporter_by_default():
        torch2onnx(image, str(tmp_path), 'end2end.onnx', deploy_cfg,
                   model_cfg, ckpt, device='cpu')
    graph = onnx.load(str(tmp_path / 'end2end.onnx')).graph
    assert sum(n.op_type == 'Conv' for n in graph.node) == len(blocks) == 7


@pytest.mark.slow
def test_mmpretrain_repvgg_format_loads_strictly_into_stock_repvgg(
        tmp_path, cifar10_tiny):
    from mmengine.config import Config
    from mmpretrain.registry import MODELS
    ckpt = trained_checkpoint(A0_CFG, tmp_path / 'a0.pth', searched=True)
    result = deploy(str(A0_CFG), str(ckpt), str(tmp_path / 'out'),
                    VerifyOptions(val_images(cifar10_tiny), 2),
                    fmt='mmpretrain-repvgg')
    assert result['repvgg_error'] <= 1e-5
    cfg = Config.fromfile(result['repvgg_config'])
    assert cfg.model.backbone.type == 'RepVGG'
    stock = MODELS.build(cfg.model)
    state = torch.load(result['repvgg_checkpoint'],
                       weights_only=True)['state_dict']
    stock.load_state_dict(state, strict=True)
    fused = build_model(Config.fromfile(result['config']))
    fused.load_state_dict(
        torch.load(result['checkpoint'], weights_only=True)['state_dict'],
        strict=True)
    x = torch.randn(2, 3, 64, 64)
    stock.eval(), fused.eval()
    with torch.no_grad():
        a, b = stock(x, mode='tensor'), fused(x, mode='tensor')
    assert ((a - b).abs().max() / b.abs().max()) <= 1e-5


@pytest.mark.slow
def test_deploy_twice_is_harmless_and_tools_test_runs_it(
        tmp_path, cifar10_tiny):
    ckpt = trained_checkpoint(A0_CFG, tmp_path / 'a0.pth', searched=True)
    args = ('tools/deploy.py', A0_CFG, ckpt, '--work-dir', tmp_path / 'out',
            '--images', *val_images(cifar10_tiny), '--num-images', '2')
    run_tool(*args)
    first = torch.load(tmp_path / 'out' / 'odbb_a0_imagenet_fused.pth',
                       weights_only=True)['state_dict']
    run_tool(*args)  # the same command again
    second = torch.load(tmp_path / 'out' / 'odbb_a0_imagenet_fused.pth',
                        weights_only=True)['state_dict']
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # Deploying the fused result again changes nothing.
    proc = run_tool('tools/deploy.py',
                    tmp_path / 'out' / 'odbb_a0_imagenet_deploy.py',
                    tmp_path / 'out' / 'odbb_a0_imagenet_fused.pth',
                    '--work-dir', tmp_path / 'again', '--images',
                    *val_images(cifar10_tiny), '--num-images', '2')
    assert 'already fused' in proc.stdout
    assert 'max relative error 0.00e+00' in proc.stdout
    # The stock evaluation tool runs the deploy config on real images.
    on_cifar = tmp_path / 'deploy_on_cifar.py'
    on_cifar.write_text(
        f"_base_ = '{tmp_path / 'out' / 'odbb_a0_imagenet_deploy.py'}'\n"
        "test_dataloader = dict(dataset=dict(_delete_=True, "
        f"type='CustomDataset', data_root='{cifar10_tiny}', "
        "data_prefix='val', indices=8, "
        "pipeline={{_base_.test_pipeline}}))\n"
        "test_evaluator = dict(topk=(1, ))\n")
    test = run_tool('tools/test.py', on_cifar,
                    tmp_path / 'out' / 'odbb_a0_imagenet_fused.pth',
                    '--work-dir', tmp_path / 'test')
    assert 'accuracy/top1' in test.stdout + test.stderr


def _one_line_error(proc, text):
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith('error: ') and text in err[-1], err[-1]
    assert 'Traceback' not in proc.stderr


@pytest.mark.slow
def test_bad_inputs_get_one_line_errors(tmp_path, cifar10_tiny):
    images = ['--images', *val_images(cifar10_tiny), '--num-images', '1']
    proc = run_tool('tools/deploy.py', A0_CFG, tmp_path / 'missing.pth',
                    '--work-dir', tmp_path / 'o', *images, check=False)
    _one_line_error(proc, 'checkpoint not found')
    # A truncated checkpoint (a copy that stopped half-way).
    whole = trained_checkpoint(A0_CFG, tmp_path / 'whole.pth').read_bytes()
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(whole[:len(whole) // 2])
    proc = run_tool('tools/deploy.py', A0_CFG, cut, '--work-dir',
                    tmp_path / 'o', *images, check=False)
    _one_line_error(proc, f'cannot read checkpoint {cut}')
    assert not (tmp_path / 'o').exists()
    # A checkpoint of another arch.
    a1 = tmp_path / 'a1.py'
    a1.write_text(f"_base_ = '{A0_CFG}'\n"
                  "model = dict(backbone=dict(arch='A1'))\n")
    ckpt = trained_checkpoint(a1, tmp_path / 'a1.pth')
    proc = run_tool('tools/deploy.py', A0_CFG, ckpt, '--work-dir',
                    tmp_path / 'o', *images, check=False)
    _one_line_error(proc, 'does not match the model of')
    # A config without ODBBs.
    plain = REPO / 'tests' / 'configs' / 'resnet18_cifar10_tiny.py'
    proc = run_tool('tools/deploy.py', plain, ckpt, '--work-dir',
                    tmp_path / 'o', *images, check=False)
    _one_line_error(proc, 'has no ODBB')
    # No images and no test data set.
    good = trained_checkpoint(A0_CFG, tmp_path / 'a0.pth')
    proc = run_tool('tools/deploy.py', A0_CFG, good, '--work-dir',
                    tmp_path / 'o', check=False)
    _one_line_error(proc, '--images')
    # A file that is not an image.
    text = tmp_path / 'notes.jpg'
    text.write_text('not an image\n')
    proc = run_tool('tools/deploy.py', A0_CFG, good, '--work-dir',
                    tmp_path / 'o', '--images', text, check=False)
    _one_line_error(proc, f'not an image (it does not decode): {text}')
    assert not (tmp_path / 'o').exists()
    # DCN layers cannot go to ONNX Runtime: a clear error, no ONNX file.
    arch = tmp_path / 'arch.json'
    from repnas_mm.models import ODBBNet
    legal = [b.branch_names
             for b in ODBBNet('A0', branches='full', deploy=True).blocks()]
    save_arch(Architecture('A0', random_architecture(legal, 66, 0)), arch)
    dcn = tmp_path / 'dcn.py'
    dcn.write_text(f"_base_ = '{DCN_CFG}'\nmodel = dict(backbone=dict("
                   f"branches='{arch}', init_cfg=None))\n")
    det_ckpt = trained_checkpoint(dcn, tmp_path / 'dcn.pth')
    proc = run_tool('tools/deploy.py', dcn, det_ckpt, '--work-dir',
                    tmp_path / 'dcn_out', '--images',
                    str(REPO / 'tests' / 'data' / 'coco8' / 'val'),
                    '--num-images', '1', '--onnx', check=False)
    _one_line_error(proc, 'DCNv2')
    assert not (tmp_path / 'dcn_out' / 'end2end.onnx').exists()
    assert not list((tmp_path / 'dcn_out').glob('*.part'))


@pytest.mark.slow
def test_failed_checks_leave_nothing_behind(tmp_path, cifar10_tiny):
    ckpt = trained_checkpoint(A0_CFG, tmp_path / 'a0.pth')
    images = val_images(cifar10_tiny)
    from repnas_mm.deploy import DeployError
    # Verification fails (an impossible tolerance): nothing is written.
    with pytest.raises(DeployError, match='nothing was written'):
        deploy(str(A0_CFG), str(ckpt), str(tmp_path / 'a'),
               VerifyOptions(images, 1, tolerance=0.0))
    assert not (tmp_path / 'a').exists() or not any(
        (tmp_path / 'a').iterdir())
    # The mmdeploy export disagrees: a deployment is written whole or not
    # at all, so nothing stands (no checkpoint, SDK file or temporary
    # folder), and an earlier deployment in the folder is left as it was.
    from repnas_mm.deploy import mmdeploy_export
    real = mmdeploy_export.compare
    mmdeploy_export.compare = lambda *a: dict(onnxruntime=0.0, sdk=0.5)
    try:
        with pytest.raises(DeployError, match='nothing was written'):
            deploy(str(A0_CFG), str(ckpt), str(tmp_path / 'b'),
                   VerifyOptions(images, 1), export=True)
    finally:
        mmdeploy_export.compare = real
    assert not (tmp_path / 'b').exists()
    out = tmp_path / 'c'
    deploy(str(A0_CFG), str(ckpt), str(out), VerifyOptions(images, 1))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    mmdeploy_export.compare = lambda *a: dict(onnxruntime=0.0, sdk=0.5)
    try:
        with pytest.raises(DeployError, match='nothing was written'):
            deploy(str(A0_CFG), str(ckpt), str(out), VerifyOptions(images, 1),
                   export=True)
    finally:
        mmdeploy_export.compare = real
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(before) == ['deploy_result.json',
                              'odbb_a0_imagenet_deploy.py',
                              'odbb_a0_imagenet_fused.pth']


def test_exporter_default_is_torchscript_only_inside_the_context(monkeypatch):
    from repnas_mm.deploy.mmdeploy_export import \
        torchscript_exporter_by_default
    calls = []
    monkeypatch.setattr(torch.onnx, 'export',
                        lambda *a, **kw: calls.append(kw.get('dynamo')))
    recorder = torch.onnx.export
    with torchscript_exporter_by_default():
        torch.onnx.export(None, (), 'x.onnx')  # as mmdeploy 1.3 calls it
        torch.onnx.export(None, (), 'x.onnx', dynamo=True)  # asks for it
    torch.onnx.export(None, (), 'x.onnx')
    assert calls == [False, True, None]
    assert torch.onnx.export is recorder


def test_default_deploy_configs_follow_the_codebase():
    from mmengine.config import Config
    from repnas_mm.deploy import DeployError
    from repnas_mm.deploy.mmdeploy_export import default_deploy_config
    for model_cfg, codebase in ((A0_CFG, 'mmpretrain'), (DET_CFG, 'mmdet')):
        path = default_deploy_config(Config.fromfile(model_cfg))
        deploy_cfg = Config.fromfile(path)
        assert deploy_cfg.codebase_config.type == codebase
        assert deploy_cfg.onnx_config.input_shape is None  # dynamic
        assert deploy_cfg.onnx_config.dynamic_axes.input[0] == 'batch'
    with pytest.raises(DeployError, match='--deploy-cfg'):
        default_deploy_config(Config(dict(default_scope='mmseg')))


def test_export_gaps_catch_wrong_labels_boxes_and_classes():
    import numpy as np
    from repnas_mm.deploy.mmdeploy_export import (_detection_gap,
                                                  _sdk_score_gap)
    boxes = np.array([[10., 10, 50, 50], [10, 10, 50, 50], [60, 0, 90, 30]])
    scores = np.array([0.9, 0.5, 0.4])
    labels = np.array([3, 7, 1])
    ref = (boxes, scores, labels)
    shape = (100, 200, 3)
    # Identical, and identical up to the order of the detections.
    assert _detection_gap(ref, ref, shape) == 0.0
    order = [1, 2, 0]
    assert _detection_gap(ref, (boxes[order], scores[order], labels[order]),
                          shape) == 0.0
    # A box corner 2 px off on a 200 px side; a score 0.01 off.
    moved = boxes.copy()
    moved[2, 0] += 2
    assert _detection_gap(ref, (moved, scores, labels), shape) == \
        pytest.approx(0.01)
    assert _detection_gap(ref, (boxes, scores + [0, 0.01, 0], labels),
                          shape) == pytest.approx(0.01)
    # A box reaching outside the image (mmdet leaves it) equals its clipped
    # form (mmdeploy's graph and SDK clip).
    outside = boxes.copy()
    outside[2] = [60, -16, 210, 30]
    clipped = boxes.copy()
    clipped[2] = [60, 0, 200, 30]
    assert _detection_gap((outside, scores, labels),
                          (clipped, scores, labels), shape) == 0.0
    # The SDK clips to the last pixel (199), the graph to the size (200),
    # mmdet not at all (199.6): one box (a held-out demo image has one).
    sdk, edge = boxes.copy(), boxes.copy()
    sdk[2], edge[2] = [60, 0, 199, 30], [60, 0, 199.6, 30]
    for got in (clipped, edge):
        assert _detection_gap((sdk, scores, labels), (got, scores, labels),
                              shape) == 0.0
    # One centred outside the image is not compared (the SDK drops it).
    away = boxes.copy()
    away[0] = [210, 10, 250, 50]
    assert _detection_gap((away, scores, labels),
                          (boxes[1:], scores[1:], labels[1:]), shape) == 0.0
    assert _detection_gap(ref, (boxes[1:], scores[1:], labels[1:]),
                          shape) == 1.0
    # Labels the way the numpy-1 SDK binding reads them under numpy 2.
    assert _detection_gap(ref, (boxes, scores, np.full(3, 1)), shape) == 1.0
    # Classifiers: the SDK's (label, score) list against PyTorch's scores.
    probs = np.array([0.1, 0.7, 0.2])
    assert _sdk_score_gap(probs, [(1, 0.7), (2, 0.2)]) == pytest.approx(0.0)
    assert _sdk_score_gap(probs, [(1, 0.69)]) == pytest.approx(0.01)
    assert _sdk_score_gap(probs, [(2, 0.7)]) == 1.0
    assert _sdk_score_gap(probs, []) == 1.0
