"""tools/deploy.py: fuse, verify on real images, export, interop, bad inputs."""
import json

import pytest
import torch

import repnas_mm  # noqa: F401
from repnas_mm.deploy import deploy
from repnas_mm.deploy.model import build_model
from repnas_mm.rep import random_architecture
from repnas_mm.rep.arch import Architecture, save_arch

from .conftest import REPO, run_tool
from .equivalence import randomize_bn

A0_CFG = REPO / 'configs' / 'odbb_a0_imagenet.py'
DET_CFG = REPO / 'configs' / 'centernet_odbb_a0_nodcn_coco.py'
DCN_CFG = REPO / 'configs' / 'centernet_odbb_a0_coco.py'


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


@pytest.mark.slow
@pytest.mark.parametrize('searched', [False, True], ids=['full', 'searched'])
def test_classifier_deploy_verifies_and_matches_onnxruntime(
        tmp_path, cifar10_tiny, searched):
    ckpt = trained_checkpoint(A0_CFG, tmp_path / 'a0.pth', searched)
    result = deploy(str(A0_CFG), str(ckpt), str(tmp_path / 'out'),
                    images=val_images(cifar10_tiny), num_images=2, onnx=True)
    assert result['images'] == 2
    assert result['fused_error'] <= 1e-4 and result['onnx_error'] <= 1e-4
    out = tmp_path / 'out'
    for name in ('end2end.onnx', 'deploy.json', 'pipeline.json',
                 'detail.json', 'odbb_a0_imagenet_fused.pth',
                 'odbb_a0_imagenet_deploy.py'):
        assert (out / name).is_file(), name
    detail = json.loads((out / 'detail.json').read_text())
    assert detail['onnx_config']['opset_version'] >= 17
    assert detail['onnx_config']['dynamic_axes']['input']['0'] == 'batch'
    assert detail['codebase']['codebase'] == 'mmpretrain'
    # The deploy config records the kept branches of every block.
    from mmengine.config import Config
    backbone = Config.fromfile(out / 'odbb_a0_imagenet_deploy.py') \
        .model.backbone
    assert backbone.deploy is True
    kept = sum(len(b) for b in backbone.branches)
    assert kept == (66 if searched else 149)
    assert not list(out.glob('*.part'))


@pytest.mark.slow
def test_detector_deploy_verifies_and_matches_onnxruntime(tmp_path, coco8):
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
                    images=[str(coco8 / 'val')], num_images=2, onnx=True)
    assert result['fused_error'] <= 1e-4 and result['onnx_error'] <= 1e-4
    assert json.loads((tmp_path / 'out' / 'detail.json').read_text())[
        'codebase']['task'] == 'ObjectDetection'


@pytest.mark.slow
def test_mmpretrain_repvgg_format_loads_strictly_into_stock_repvgg(
        tmp_path, cifar10_tiny):
    from mmengine.config import Config
    from mmpretrain.registry import MODELS
    ckpt = trained_checkpoint(A0_CFG, tmp_path / 'a0.pth', searched=True)
    result = deploy(str(A0_CFG), str(ckpt), str(tmp_path / 'out'),
                    images=val_images(cifar10_tiny), num_images=2,
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
        deploy(str(A0_CFG), str(ckpt), str(tmp_path / 'a'), images=images,
               num_images=1, tolerance=0.0)
    assert not (tmp_path / 'a').exists() or not any(
        (tmp_path / 'a').iterdir())
    # ONNX parity fails: the checkpoint stands, no ONNX file, no temp file.
    from repnas_mm.deploy import workflow
    real = workflow.relative_error
    calls = []

    def strict_onnx(got, ref):
        calls.append(1)
        return 1.0 if len(calls) == 2 else real(got, ref)

    workflow.relative_error = strict_onnx
    try:
        with pytest.raises(DeployError, match='no ONNX file was written'):
            deploy(str(A0_CFG), str(ckpt), str(tmp_path / 'b'),
                   images=images, num_images=1, onnx=True)
    finally:
        workflow.relative_error = real
    out = tmp_path / 'b'
    assert (out / 'odbb_a0_imagenet_fused.pth').is_file()
    assert not (out / 'end2end.onnx').exists()
    assert not list(out.glob('*.part')) and not list(out.glob('*.onnx*'))
