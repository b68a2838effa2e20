"""CenterNet with the searched or fused ODBBNet backbone, on real COCO images."""
import json
import math

import pytest
import torch

import repnas_mm  # noqa: F401
from repnas_mm.models import ODBBNet
from repnas_mm.rep import ODBB, random_architecture, reparameterize_model
from repnas_mm.rep.arch import Architecture, save_arch

from .conftest import REPO, read_scalars, run_tool
from .equivalence import randomize_bn

DEMO_ARCH = dict(
    name='demo',
    stem_channels=16,
    channels=(16, 32, 64, 128),
    num_blocks=(1, 2, 2, 1),
    strides=(2, 2, 2, 2))


def small_coco8_config(tmp_path, base, coco8, model='dict()', extra=''):
    """A config inheriting ``base`` on coco8 with 128-pixel inputs."""
    cfg = tmp_path / f'{base.stem}_coco8.py'
    cfg.write_text(f'''
_base_ = '{base}'
data_root = '{coco8}/'
model = {model}
train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomCenterCropPad', crop_size=(128, 128),
         ratios=(0.8, 1.0, 1.2), mean=[0, 0, 0], std=[1, 1, 1], to_rgb=True,
         test_pad_mode=None),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='Resize', scale=(160, 160), keep_ratio=True),
    dict(type='RandomCenterCropPad', ratios=None, border=None,
         mean=[0, 0, 0], std=[1, 1, 1], to_rgb=True, test_mode=True,
         test_pad_mode=['logical_or', 31], test_pad_add_pix=1),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                          'img_shape', 'border',
                                          'scale_factor')),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(times=1, dataset=dict(
        data_root=data_root, ann_file='instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=1),
        pipeline=train_pipeline)))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1, val_interval=1)
param_scheduler = [dict(type='ConstantLR', factor=1.0)]
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0)
{extra}
''')
    return cfg


def random_searched_arch(tmp_path, arch, budget):
    """A searched_arch.json of ``budget`` random branches for ``arch``."""
    net = ODBBNet(arch, branches='full', deploy=True)
    legal = [b.branch_names for b in net.blocks()]
    path = tmp_path / f'{arch}_searched_arch.json'
    save_arch(
        Architecture(arch, random_architecture(legal, budget, seed=0),
                     budget=budget), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize('name,arch,budget', [
    ('centernet_odbb_a0_coco', 'A0', 66),
    ('centernet_odbb_a0_nodcn_coco', 'A0', 66),
    ('centernet_odbb_b3_coco', 'B3', 84),
])
def test_centernet_configs_train(tmp_path, coco8, name, arch, budget):
    base = REPO / 'configs' / f'{name}.py'
    searched = random_searched_arch(tmp_path, arch, budget)
    cfg = small_coco8_config(
        tmp_path, base, coco8,
        model=f"dict(backbone=dict(branches='{searched}', init_cfg=None))")
    work = tmp_path / 'work'
    run_tool('tools/train.py', cfg, '--work-dir', work,
             *(['--no-validate'] if arch == 'B3' else []))
    steps = [s for s in read_scalars(work) if 'loss' in s]
    assert len(steps) == 1  # 4 images, batch 4
    for key in ('loss_center_heatmap', 'loss_wh', 'loss_offset'):
        assert math.isfinite(steps[0][key]) and steps[0][key] > 0
    if arch == 'A0':
        # tools/test.py evaluates the checkpoint with CocoMetric.
        test = run_tool('tools/test.py', cfg, work / 'epoch_1.pth',
                        '--work-dir', tmp_path / 'test')
        out = test.stdout + test.stderr
        assert 'coco/bbox_mAP:' in out
        assert 'Average Precision  (AP) @[ IoU=0.50:0.95' in out


def _det_model_cfg(backbone):
    from mmengine.config import Config
    cfg = Config.fromfile(REPO / 'configs' / 'centernet_odbb_a0_coco.py')
    cfg.model.backbone.update(backbone)
    cfg.model.neck.in_channels = 128
    return cfg.model


def _searched_twin(run):
    """The searched multi-branch classifier backbone, loaded from the run."""
    net = ODBBNet(DEMO_ARCH, branches=str(run / 'searched_arch.json'))
    net.load_pretrained(str(run / 'epoch_2.pth'), prefix='backbone.')
    return net.eval()


@pytest.mark.slow
def test_mode_searched_multibranch(searched_classifier):
    """Mode 1: the searched branches, the checkpoint's weights.

    One setting names the classification run: ``branches=`` its checkpoint
    (which carries the architecture); the config's ``Pretrained`` init has
    no checkpoint of its own and takes that one.
    """
    from mmdet.registry import MODELS
    run = searched_classifier
    ckpt = run / 'epoch_2.pth'
    model = _det_model_cfg(dict(arch=DEMO_ARCH, branches=str(ckpt)))
    assert model.backbone.init_cfg == dict(type='Pretrained',
                                           prefix='backbone.')
    detector = MODELS.build(model)
    detector.init_weights()
    searched = json.loads((run / 'searched_arch.json').read_text())
    blocks = [b.branch_names for b in detector.backbone.blocks()]
    assert blocks == [tuple(b['branches']) for b in searched['blocks']]
    assert sum(map(len, blocks)) == searched['budget'] == 22
    source = torch.load(ckpt, weights_only=True)['state_dict']
    for key, value in detector.backbone.state_dict().items():
        assert torch.equal(value, source['backbone.' + key]), key


@pytest.mark.slow
def test_mode_fused(searched_classifier):
    """Mode 2: deploy=True, the checkpoint's multi-branch weights fused."""
    from mmdet.registry import MODELS
    run = searched_classifier
    detector = MODELS.build(
        _det_model_cfg(
            dict(
                arch=DEMO_ARCH,
                deploy=True,
                branches=str(run / 'searched_arch.json'),
                init_cfg=dict(checkpoint=str(run / 'epoch_2.pth')))))
    detector.init_weights()
    backbone = detector.backbone.eval()
    assert all(b.fused_conv is not None for b in backbone.blocks())
    twin = _searched_twin(run)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, got = twin(x)[-1], backbone(x)[-1]
    assert ((got - ref).abs().max() / ref.abs().max()) <= 1e-5


@pytest.mark.slow
def test_mode_search_on_detection(tmp_path, searched_classifier, coco8):
    """Mode 3: the supernet's weights and the classification alpha go on."""
    from mmdet.registry import MODELS
    from mmengine.runner import load_checkpoint
    run = searched_classifier
    ckpt = run / 'epoch_2.pth'
    cls_state = torch.load(ckpt, weights_only=True)
    base = REPO / 'configs' / 'centernet_odbb_a0_search_coco.py'
    model = (f"dict(backbone=dict(arch=dict(_delete_=True, **{DEMO_ARCH!r})),"
             " neck=dict(in_channels=128))")
    cfg = small_coco8_config(
        tmp_path, base, coco8, model=model,
        extra=f"load_from = '{ckpt}'\n"
        "custom_hooks = [dict(type='RepNASHook', budget=0.5, seed=0)]")
    # The weights: load_from puts every supernet tensor in place.
    from mmengine.config import Config
    detector = MODELS.build(Config.fromfile(cfg).model)
    assert all(len(b.branch_names) >= 6 for b in detector.backbone.blocks())
    load_checkpoint(detector, str(ckpt), strict=False)
    for key, value in detector.backbone.state_dict().items():
        assert torch.equal(value, cls_state['state_dict']['backbone.' + key])
    # The search: one training iteration on coco8, alpha warm-started.
    work = tmp_path / 'work'
    proc = run_tool('tools/train.py', cfg, '--work-dir', work,
                    '--no-validate')
    assert 'alpha warm-started from the loaded checkpoint' in (
        proc.stdout + proc.stderr)
    det_alpha = torch.load(
        work / 'epoch_1.pth', weights_only=True)['repnas']['space']['alpha']
    cls_alpha = cls_state['repnas']['space']['alpha']
    assert cls_alpha.abs().max() > 0.01  # the classification search moved it
    # One Adam step (lr 1e-4) away from the classification alpha.
    assert torch.allclose(det_alpha, cls_alpha, atol=2e-4)


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    net = ODBBNet('A0', branches='dbb')
    torch.save({'state_dict': {f'backbone.{k}': v
                               for k, v in net.state_dict().items()}},
               tmp_path / 'a0_dbb.pth')
    with pytest.raises(ValueError, match='does not match ODBBNet-A1'):
        ODBBNet('A1', branches='dbb').load_pretrained(
            str(tmp_path / 'a0_dbb.pth'), prefix='backbone.')
    with pytest.raises(ValueError, match='search that kept other branches'):
        ODBBNet('A0', branches='full').load_pretrained(
            str(tmp_path / 'a0_dbb.pth'), prefix='backbone.')
    with pytest.raises(ValueError, match="no tensor under the prefix"):
        ODBBNet('A0', branches='dbb').load_pretrained(
            str(tmp_path / 'a0_dbb.pth'), prefix='model.')
    fused = ODBBNet('A0', deploy=True)
    torch.save(fused.state_dict(), tmp_path / 'fused.pth')
    with pytest.raises(ValueError, match='deploy=True'):
        ODBBNet('A0', branches='dbb').load_pretrained(
            str(tmp_path / 'fused.pth'))
    with pytest.raises(ValueError, match='carries no searched architecture'):
        ODBBNet('A0', branches=str(tmp_path / 'a0_dbb.pth'))


@pytest.mark.slow
def test_fused_detector_returns_the_same_detections(tmp_path, coco8):
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.runner import Runner
    base = REPO / 'configs' / 'centernet_odbb_a0_coco.py'
    cfg = Config.fromfile(
        small_coco8_config(
            tmp_path, base, coco8,
            model="dict(backbone=dict(branches='full', init_cfg=None))"))
    torch.manual_seed(0)
    detector = MODELS.build(cfg.model)
    detector.init_weights()
    randomize_bn(detector).eval()
    fused = reparameterize_model(detector)
    assert not any(isinstance(m, ODBB) and m.fused_conv is None
                   for m in fused.modules())
    loader = Runner.build_dataloader(cfg.test_dataloader)
    compared = 0
    with torch.no_grad():
        for batch in loader:
            ref = detector.test_step(batch)[0].pred_instances
            got = fused.test_step(batch)[0].pred_instances
            assert len(ref) == len(got) == 100
            assert (got.scores - ref.scores).abs().max() <= 1e-4
            assert torch.equal(got.labels, ref.labels)
            assert (got.bboxes - ref.bboxes).abs().max() <= 1e-2
            compared += 1
    assert compared == 4  # the four coco8 validation photos


def test_pretrained_without_a_checkpoint_needs_a_run_in_branches():
    from repnas_mm.errors import UserError
    net = ODBBNet('A0', branches='dbb',
                  init_cfg=dict(type='Pretrained', prefix='backbone.'))
    with pytest.raises(UserError, match='needs a checkpoint'):
        net.init_weights()


@pytest.mark.parametrize('config,nodcn', [
    ('configs/centernet_odbb_a0_coco.py',
     'configs/centernet_odbb_a0_nodcn_coco.py'),
    ('tests/configs/centernet_r18_coco8.py', None),
])
def test_dcn_on_a_gpu_with_cpu_only_mmcv_stops_at_build_in_one_line(
        monkeypatch, config, nodcn):
    """A GPU and an mmcv built without a CUDA compiler (both simulated on
    this CPU machine): the DCNv2 neck stops the run when the model is
    built, naming the _nodcn config (or the option); with CUDA ops, or
    without a GPU, nothing is said."""
    import mmcv.ops
    from mmengine.config import Config

    from repnas_mm.deploy.model import build_model_unchecked
    from repnas_mm.errors import UserError
    from repnas_mm.runner import check_cuda_ops
    cfg = Config.fromfile(str(REPO / config))
    cfg.filename = config  # as a user names it
    if cfg.model.backbone.type == 'ODBBNet':  # no searched run here
        cfg.merge_from_dict({'model.backbone.branches': 'repvgg',
                             'model.backbone.init_cfg': None})
    model = build_model_unchecked(cfg)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    check_cuda_ops(model, cfg)  # no GPU: nothing to say
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(mmcv.ops, 'get_compiling_cuda_version',
                        lambda: '13.0')
    check_cuda_ops(model, cfg)  # CUDA ops: nothing to say
    monkeypatch.setattr(mmcv.ops, 'get_compiling_cuda_version',
                        lambda: 'not available')
    advice = f'use {nodcn} (plain up-convs)' if nodcn else \
        'use plain up-convs (--cfg-options model.neck.use_dcn=False)'
    with pytest.raises(UserError, match='deformable conv .* CPU ops only') \
            as error:
        check_cuda_ops(model, cfg)
    assert advice in str(error.value) and '\n' not in str(error.value)
    cfg.merge_from_dict({'model.neck.use_dcn': False})
    check_cuda_ops(build_model_unchecked(cfg), cfg)
