"""RefConv (weight re-parameterization of trained convs): conversion keeps
outputs, training moves only W_r, fusion is exact, stock layouts round-trip."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import repnas_mm  # noqa: F401
from repnas_mm.models import ODBBNet
from repnas_mm.rep import (RefConv, convert_to_refconv, named_odbbs,
                           reparameterize_model)
from repnas_mm.rep.transforms import refocus_kernel

from .equivalence import assert_close_rel, randomize_bn, rel_error

DEMO_ARCH = dict(name='demo', stem_channels=16, channels=(16, 32, 64, 128),
                 num_blocks=(1, 2, 2, 1), strides=(2, 2, 2, 2))


def test_refocus_kernel_is_the_slides_transform():
    """W_t = W_b * W_r + W_b, the kernel read as an image of 2-D kernels:
    depthwise convs get a dense transform (G = 1), dense convs a depthwise
    one (G = C_out C_in), grouped convs groups of g kernels."""
    torch.manual_seed(0)
    for cout, cin, groups in [(6, 6, 6), (6, 4, 1), (8, 4, 2)]:
        base = torch.randn(cout, cin // groups, 3, 3)
        n = cout * cin // groups
        map_groups = cout * cin // groups**2
        w_r = torch.randn(n, groups, 3, 3)
        got = refocus_kernel(base, w_r, map_groups)
        # By hand: output kernel c mixes the g kernels of its group.
        flat = base.reshape(n, 3, 3)
        for c in range(n):
            g0 = (c // groups) * groups
            ref = flat[c] + sum(
                F.conv2d(flat[g0 + j][None, None], w_r[c, j][None, None],
                         padding=1)[0, 0] for j in range(groups))
            assert torch.allclose(got.reshape(n, 3, 3)[c], ref, atol=1e-5)
        assert torch.equal(refocus_kernel(base, torch.zeros_like(w_r),
                                          map_groups), base)


@pytest.mark.parametrize('cin,cout,groups,k,stride,bias', [
    (8, 8, 8, 3, 1, False),    # depthwise
    (8, 16, 1, 3, 2, False),   # dense
    (8, 12, 4, 5, 1, True),    # grouped, K=5, with bias
])
def test_refconv_starts_as_its_conv_and_fuses_exactly_after_training(
        cin, cout, groups, k, stride, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)
    ref = RefConv.from_conv(conv)
    assert ref.refocus.shape == (cout * cin // groups, groups, 3, 3)
    assert ref.map_groups == cout * cin // groups**2
    x = torch.randn(2, cin, 11, 11)
    assert rel_error(ref(x), conv(x)) <= 1e-6
    # Train: only W_r (and the bias) move; the base kernel is a buffer.
    trainable = dict(ref.named_parameters())
    assert set(trainable) == {'refocus'} | ({'bias'} if bias else set())
    base = ref.weight.clone()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        ref(x).pow(2).mean().backward()
        opt.step()
    assert torch.equal(ref.weight, base)
    assert ref.refocus.abs().sum() > 0
    trained = ref(x).detach()
    assert rel_error(trained, conv(x).detach()) > 1e-4  # it did change
    plain = ref.to_conv()
    assert type(plain) is nn.Conv2d
    assert_close_rel(plain(x), trained, tol=1e-6)
    # The stock conv's state dict layout: it loads strictly.
    conv.load_state_dict(plain.state_dict(), strict=True)


def test_convert_keeps_outputs_and_fuses_to_the_stock_resnet():
    from mmpretrain.models import ResNet
    torch.manual_seed(0)
    stock = randomize_bn(ResNet(18))
    stock.eval()
    model = copy.deepcopy(stock)
    names = convert_to_refconv(model)
    # Every 3x3 (and the 7x7 stem); the 1x1 downsample convs stay.
    assert len(names) == 17
    assert all(isinstance(model.get_submodule(n), RefConv) for n in names)
    assert model.get_submodule('layer2.0.downsample.0').__class__ is \
        nn.Conv2d
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert rel_error(model(x)[-1], stock(x)[-1]) <= 1e-6
        for m in model.modules():
            if isinstance(m, RefConv):
                m.refocus.normal_(std=0.05)  # as if trained
        trained = model(x)[-1]
    fused = reparameterize_model(model)
    assert not any(isinstance(m, RefConv) for m in fused.modules())
    fresh = ResNet(18)
    fresh.load_state_dict(fused.state_dict(), strict=True)
    fresh.eval()
    with torch.no_grad():
        assert_close_rel(fresh(x)[-1], trained, tol=1e-5)


def test_refocusing_a_fused_searched_odbbnet():
    """The second stage after a search: the fused network's convs become
    RefConvs, and fuse back into the fused ODBBNet's layout."""
    torch.manual_seed(0)
    net = randomize_bn(ODBBNet(DEMO_ARCH, branches='repvgg'))
    fused = reparameterize_model(net)
    fused.eval()
    model = copy.deepcopy(fused)
    names = convert_to_refconv(model, torch.zeros(1, 3, 32, 32))
    assert len(names) == 7 and all(n.endswith('fused_conv') for n in names)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_error(model(x)[-1], fused(x)[-1]) <= 1e-6
        for m in model.modules():
            if isinstance(m, RefConv):
                m.refocus.normal_(std=0.05)
        trained = model(x)[-1]
        back = reparameterize_model(model)
        assert_close_rel(back(x)[-1], trained, tol=1e-5)
    deploy = ODBBNet(DEMO_ARCH, branches='repvgg', deploy=True)
    deploy.load_state_dict(back.state_dict(), strict=True)


def test_convert_rejects_what_it_cannot_keep():
    with pytest.raises(ValueError, match='odd'):
        RefConv(torch.randn(4, 4, 3, 3), map_kernel_size=2)
    conv = nn.Conv2d(4, 4, 3, padding='same')
    with pytest.raises(ValueError, match='explicit zero padding'):
        RefConv.from_conv(conv)


def test_a_plain_convs_weights_load_as_the_base_with_zero_refocus():
    """What ``load_from`` a stock checkpoint does: W_b = the conv's kernel,
    W_r = 0 (even after training moved it), nothing reported missing."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    ref = RefConv.from_conv(nn.Conv2d(4, 6, 3, padding=1))
    with torch.no_grad():
        ref.refocus.normal_()
    result = ref.load_state_dict(conv.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(ref.weight, conv.weight)
    assert not ref.refocus.any()
    x = torch.randn(1, 4, 8, 8)
    assert torch.equal(ref(x), conv(x))
    # Its own state dict keeps W_r.
    with torch.no_grad():
        ref.refocus.normal_()
    other = RefConv.from_conv(conv)
    other.load_state_dict(ref.state_dict(), strict=True)
    assert torch.equal(other.refocus, ref.refocus)
    with pytest.raises(RuntimeError, match='weight'):
        other.load_state_dict({'refocus': ref.refocus}, strict=True)


def test_a_fused_block_reports_its_refocused_kernel():
    torch.manual_seed(0)
    net = reparameterize_model(ODBBNet(DEMO_ARCH, branches='repvgg'))
    convert_to_refconv(net, torch.zeros(1, 3, 32, 32))
    block = next(iter(named_odbbs(net).values()))
    with torch.no_grad():
        block.fused_conv.refocus.normal_(std=0.1)
    kernel, bias = block.kernel_bias()
    assert torch.equal(kernel, block.fused_conv.kernel())
    assert not torch.equal(kernel, block.fused_conv.weight)
    assert bias is block.fused_conv.bias


def test_refconv_converted_builds_a_stock_backbone_refocused():
    from mmpretrain.registry import MODELS
    torch.manual_seed(0)
    cfg = dict(type='ResNet_CIFAR', depth=18, _scope_='mmpretrain')
    model = MODELS.build(dict(type='RefConvConverted', backbone=cfg,
                              input_size=32))
    refconvs = [n for n, m in model.named_modules() if isinstance(m, RefConv)]
    assert len(refconvs) == 17 and 'conv1' in refconvs
    # Key names stay the stock ones (plus W_r): the stock model's
    # state dict loads, and its fused self loads into the stock model.
    stock = randomize_bn(MODELS.build(cfg))
    stock.eval()  # (mmpretrain's ResNet.eval returns None)
    model.load_state_dict(stock.state_dict(), strict=True)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_error(model(x)[-1], stock(x)[-1]) <= 1e-6
    assert {k for k in model.state_dict() if k.endswith('refocus')} == \
        {f'{n}.refocus' for n in refconvs}
    MODELS.build(cfg).load_state_dict(
        reparameterize_model(model).state_dict(), strict=True)


def test_refconv_converted_refuses_what_is_not_a_trained_plain_net():
    from mmpretrain.registry import MODELS
    with pytest.raises(ValueError, match='deploy=True'):
        MODELS.build(dict(type='RefConvConverted', input_size=32,
                          backbone=dict(type='ODBBNet', arch=DEMO_ARCH,
                                        _scope_='mmpretrain')))

    class Pointwise(nn.Sequential):  # 1x1 convs only: nothing to refocus
        def __init__(self):
            super().__init__(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1))

    MODELS.register_module(name='_TestPointwise', module=Pointwise,
                           force=True)
    try:
        with pytest.raises(ValueError, match='no plain KxK conv'):
            MODELS.build(dict(type='RefConvConverted', input_size=8,
                              backbone=dict(type='_TestPointwise',
                                            _scope_='mmpretrain')))
    finally:
        MODELS.module_dict.pop('_TestPointwise')


@pytest.mark.slow
def test_refocus_fine_tune_through_tools_train_and_deploy(
        tmp_path, searched_classifier, cifar10_tiny):
    """The second stage on real images: the searched classifier fused by
    deploy, fine-tuned with RefConvs by tools/train.py, deployed again."""
    import json
    import re

    from repnas_mm.deploy import VerifyOptions, deploy

    from .conftest import REPO, cls_data_options, read_scalars, run_tool
    search_cfg = str(REPO / 'tests/configs/odbb_cls_cifar10_tiny.py')
    first = deploy(search_cfg, str(searched_classifier / 'epoch_2.pth'),
                   str(tmp_path / 'fused'), VerifyOptions(num_images=2))
    arch = searched_classifier / 'searched_arch.json'
    options = [f'load_from={first["checkpoint"]}',
               f'model.backbone.backbone.branches={arch}',
               'train_cfg.max_epochs=2', 'param_scheduler.T_max=2',
               'train_dataloader.batch_size=16',
               'default_hooks.logger.interval=1',
               *cls_data_options(cifar10_tiny)]
    config = REPO / 'configs/demo/odbb_fmnist_refocus_cls.py'
    work = tmp_path / 'refocus'
    proc = run_tool('tools/train.py', config, '--work-dir', work,
                    '--cfg-options', *options)
    log = proc.stdout + proc.stderr
    assert f'Load checkpoint from {first["checkpoint"]}' in log
    assert 'missing keys' not in log and 'unexpected key' not in log
    losses = [r['loss'] for r in read_scalars(work) if 'loss' in r]
    assert len(losses) == 2 * 10  # 160 training images, batch 16
    assert all(torch.isfinite(torch.tensor(losses)))
    val = [r['accuracy/top1'] for r in read_scalars(work)
           if 'accuracy/top1' in r]
    assert len(val) == 2

    start = torch.load(first['checkpoint'], weights_only=True)['state_dict']
    trained = torch.load(work / 'epoch_2.pth', map_location='cpu',
                         weights_only=False)['state_dict']
    convs = [k[:-len('.refocus')] for k in trained if k.endswith('.refocus')]
    assert len(convs) == 7
    for name in convs:
        # The fused kernels stayed frozen; the refocusing transforms moved.
        assert torch.equal(trained[name + '.weight'], start[name + '.weight'])
        assert trained[name + '.refocus'].abs().max() > 0

    result = deploy(str(config), str(work / 'epoch_2.pth'),
                    str(tmp_path / 'deploy'), VerifyOptions(num_images=2),
                    export=True,
                    cfg_options=dict(o.split('=', 1) for o in
                                     options[:2] + cls_data_options(
                                         cifar10_tiny)))
    assert result['fused_error'] <= 1e-6
    assert result['onnxruntime_error'] <= 1e-3 and result['sdk_error'] <= 1e-3
    fused = torch.load(result['checkpoint'], weights_only=True)['state_dict']
    for name in convs:  # W_t = W_b * W_r + W_b, in the stock layout
        w_r = trained[name + '.refocus']
        kernel = refocus_kernel(trained[name + '.weight'], w_r,
                                w_r.shape[0] // w_r.shape[1])
        assert torch.allclose(fused[name + '.weight'], kernel, atol=1e-7)
        assert not torch.allclose(kernel, start[name + '.weight'])
    # The deploy config builds the stock fused ODBBNet of the searched
    # architecture (no RefConv), and evaluates to what training validated.
    from mmengine.config import Config
    deployed = Config.fromfile(result['config'])
    assert deployed.model.backbone.type == 'ODBBNet'
    assert deployed.model.backbone.deploy is True
    assert deployed.model.backbone.branches == [
        b['branches'] for b in json.loads(arch.read_text())['blocks']]
    assert 'RefConv' not in open(result['config']).read()
    test = run_tool('tools/test.py', result['config'], result['checkpoint'],
                    '--work-dir', tmp_path / 'test', '--cfg-options',
                    *cls_data_options(cifar10_tiny))
    top1 = float(re.search(r'accuracy/top1: ([0-9.]+)',
                           test.stdout + test.stderr).group(1))
    assert abs(top1 - val[-1]) < 1e-3, (top1, val[-1])
    assert fused.keys() == start.keys()


@pytest.mark.slow
def test_benchmark_refconv_cost_counts_what_refconv_adds(tmp_path):
    """tools/benchmark_refconv.py cost on the demo's refocus config: W_r
    has as many weights as the kernels it refocuses (dense convs), and a
    step saves, besides the baseline's activations, exactly one refocused
    kernel W_t per conv."""
    import json

    from .conftest import REPO, run_tool
    run_tool('tools/benchmark_refconv.py', 'cost',
             REPO / 'configs/demo/odbb_fmnist_refocus_cls.py', '--repeats',
             '2', '--batch-size', '4', '--out', tmp_path, '--cfg-options',
             'model.backbone.backbone.branches=full')
    result = json.loads((tmp_path / 'refconv_cost.json').read_text())
    kernels = sum(b.fused_conv.weight.numel() for b in named_odbbs(
        ODBBNet(DEMO_ARCH, deploy=True)).values())
    assert result['frozen'] == dict(baseline=0, refconv=kernels)
    assert result['trainable']['refconv'] == result['trainable']['baseline']
    memory = result['memory']
    extra = (memory['refconv']['saved_mib'] -
             memory['baseline']['saved_mib']) * 2**20
    assert extra == 4 * kernels  # fp32 W_t
    assert all(len(s) == 2 and min(s) > 0
               for s in result['step_seconds'].values())
    assert '| refconv |' in (tmp_path / 'refconv_cost.md').read_text()


def test_benchmark_refconv_refuses_bad_inputs_in_one_line(tmp_path):
    from .conftest import REPO, run_tool
    cases = [(REPO / 'configs/resnet18_cifar10_refocus.py',
              ['--cfg-options', f'load_from={tmp_path / "none.pth"}'],
              'the checkpoint both fine-tunes start from is missing'),
             (REPO / 'configs/resnet18_cifar10_finetune.py', [],
              'has no RefConvConverted backbone')]
    for config, extra, message in cases:
        proc = run_tool('tools/benchmark_refconv.py', 'accuracy', config,
                        '--work-dir', tmp_path / 'out', *extra, check=False)
        assert proc.returncode == 1
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith('error: ') and message in last, last
        assert 'Traceback' not in proc.stderr
    assert not (tmp_path / 'out').exists()
