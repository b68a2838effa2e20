"""Quantization-aware training on the equivalent kernel (repnas_mm.rep.quant,
repnas_mm.quant): the fake quantization's numbers, where the quantizers go,
and the model's fp32 behaviour when they are off."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import repnas_mm  # noqa: F401
from repnas_mm.rep import build_odbb, reparameterize_model
from repnas_mm.rep.quant import (ActQuant, act_quantizers, calibrate,
                                 fake_quant_weight, is_quantizer_key, plan,
                                 prepare_qat, quantized_layers,
                                 set_quantization, strip_quantization,
                                 weight_scale)

from .equivalence import assert_close_rel, randomize_bn
from .test_online import randomize_online

FORMS = ('standard', 'quant_friendly', 'online')


def _block(form, seed=0):
    torch.manual_seed(seed)
    block = build_odbb(8, 8, 3, 1, branches='full', form=form)
    (randomize_online if form == 'online' else randomize_bn)(block, seed)
    return block.eval()


@pytest.mark.parametrize('form', FORMS)
def test_fake_quantized_kernel_is_qdq_of_the_composed_kernel(form):
    # A conv after it, so that the block is not an output layer.
    block = _block(form)
    net = nn.Sequential(block, nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    assert prepare_qat(net, lambda m: m(torch.zeros(1, 8, 6, 6))) == ['0']
    quant = block.quant
    kernel, bias = block.kernel_bias()
    got, got_bias = quant.kernel_bias(block)
    assert torch.equal(got, kernel) and torch.equal(got_bias, bias)
    scale = kernel.detach().abs().amax(dim=(1, 2, 3)) / 127
    qdq = torch.fake_quantize_per_channel_affine(
        kernel.detach(), scale, torch.zeros(8, dtype=torch.int32), 0, -127,
        127)
    fq, _ = quant.quantized_kernel(block)
    assert torch.allclose(fq, qdq, rtol=0, atol=1e-7)
    # On the INT8 grid: each channel a whole multiple of its scale, and the
    # largest tap exactly +-127 steps.
    steps = fq / scale.reshape(-1, 1, 1, 1)
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    assert torch.allclose(steps.abs().amax(dim=(1, 2, 3)),
                          torch.full((8, ), 127.0), atol=1e-4)
    assert torch.equal(quant.weight_scale(block), scale)
    # The fused block quantizes the same kernel.
    fused = reparameterize_model(net)
    fused_fq, _ = fused[0].quant.quantized_kernel(fused[0])
    assert torch.allclose(fused_fq, fq, atol=1e-6)


def test_weight_fake_quant_passes_gradients_straight_through():
    kernel = torch.randn(4, 3, 3, 3, requires_grad=True)
    fake_quant_weight(kernel).sum().backward()
    assert torch.equal(kernel.grad, torch.ones_like(kernel))
    assert torch.equal(weight_scale(torch.zeros(2, 1, 1, 1)), torch.ones(2))


def test_activation_fake_quant_is_onnx_runtimes_uint8():
    q = ActQuant()
    x = torch.linspace(-1.5, 3.0, 101)
    assert torch.equal(q(x), x)  # not calibrated: passes through
    q.observing = True
    q(x)
    q(x * 0.5)
    q.end_calibration()
    assert bool(q.calibrated)
    assert (q.lo.item(), q.hi.item()) == (-1.5, 3.0)
    scale, zero_point = q.scale_zero_point()
    assert scale == pytest.approx(4.5 / 255)
    assert zero_point == round(1.5 / (4.5 / 255))
    ref = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)
    assert torch.allclose(q(x), ref, atol=1e-6)
    # A range that excludes 0 is widened to contain it (as ORT does).
    with torch.no_grad():
        q.lo.fill_(0.5)
    assert q.scale_zero_point() == (pytest.approx(3.0 / 255), 0)
    # LSQ+: the range learns from the task's loss.
    with torch.no_grad():
        q.lo.fill_(-1.0)
        q.hi.fill_(1.0)
    x = torch.linspace(-2, 2, 64, requires_grad=True)
    q(x).pow(2).sum().backward()
    assert q.hi.grad.item() > 0 and q.lo.grad.item() < 0
    # Gradients reach x inside the range only.
    assert torch.equal(x.grad != 0, (x.detach() >= -1) & (x.detach() <= 1))
    q.enabled = False
    assert torch.equal(q(x), x)


class _Detector(nn.Module):
    """Conv-BN-ReLU (in place), a deconv-BN-ReLU, two heads sharing their
    input (conv-ReLU-conv each), like CenterNet's."""

    def __init__(self):
        super().__init__()
        self.stem = build_odbb(3, 8, 3, 2, branches='full')
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 8, 4, 2, 1, bias=False)
        self.up_bn = nn.BatchNorm2d(8)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
                          nn.Conv2d(8, c, 1)) for c in (3, 2))

    def forward(self, x):
        x = self.act(self.stem(x))
        x = F.relu(self.bn(self.conv(x)), inplace=True)
        x = torch.relu(self.up_bn(self.up(x)))
        return [head(x) for head in self.heads]


def test_placement_follows_onnx_runtime():
    net = randomize_bn(_Detector()).eval()
    entries = {e['name']: e for e in plan(net, lambda m: m(torch.zeros(
        1, 3, 16, 16)))}
    # The output layers (no conv after them) stay fp32.
    assert list(entries) == ['stem', 'conv', 'up', 'heads.0.0', 'heads.1.0']
    assert entries['conv']['bn'] == 'bn' and entries['up']['bn'] == 'up_bn'
    assert entries['stem']['bn'] is None  # an ODBB folds its own BNs
    # Every layer's output is quantized after its ReLU (fused), and the
    # next layer reads that very tensor: one quantizer for both.
    assert all(e['relu'] for e in entries.values())
    assert entries['stem']['output'] == entries['conv']['input']
    assert entries['up']['output'] == entries['heads.0.0']['input'] \
        == entries['heads.1.0']['input']

    x = torch.randn(2, 3, 16, 16)
    ref = net(x)
    prepare_qat(net, lambda m: m(torch.zeros(1, 3, 16, 16)))
    assert list(quantized_layers(net)) == list(entries)
    quantizers = act_quantizers(net)
    # The input, the outputs of stem, conv and up (the heads' shared
    # input), and each head's first conv.
    assert len(quantizers) == 6
    assert net.heads[0][0].quant.act_in is net.heads[1][0].quant.act_in
    # Each quantizer is saved once, under the first layer that uses it.
    keys = [k for k in net.state_dict() if is_quantizer_key(k)]
    assert len(keys) == 3 * 6  # lo, hi, calibrated
    assert 'heads.1.0.quant.act_in.lo' not in keys
    # Off, the model is the fp32 one (BNs folded as deployed).
    set_quantization(net, False)
    for got, want in zip(net(x), ref):
        assert_close_rel(got, want)
    with pytest.raises(ValueError, match='quantization-aware already'):
        prepare_qat(net, lambda m: m(torch.zeros(1, 3, 16, 16)))


def test_calibrated_qat_trains_the_branches_and_the_ranges():
    net = randomize_bn(_Detector())
    prepare_qat(net, lambda m: m(torch.zeros(1, 3, 16, 16)))
    batches = [torch.randn(2, 3, 16, 16) for _ in range(3)]
    assert calibrate(net, batches, lambda m, b: m(b)) == 3
    assert all(bool(q.calibrated) for q in act_quantizers(net))
    ref = copy.deepcopy(net)
    set_quantization(ref, False)
    x = batches[0]
    with torch.no_grad():
        fp32, int8 = ref.eval()(x), net.eval()(x)
    # Quantized: close to fp32, not equal to it.
    for a, b in zip(int8, fp32):
        err = ((a - b).abs().max() / b.abs().max()).item()
        assert 0 < err < 0.1, err
    net.train()
    loss = sum(y.square().mean() for y in net(x))
    loss.backward()
    assert net.stem.branches['1x1'].bn.weight.grad.abs().sum() > 0
    assert net.stem.weight.grad.abs().sum() > 0
    assert net.bn.weight.grad.abs().sum() > 0  # folded, still trained
    assert net.conv.quant.act_out.hi.grad is not None
    # QAT never changes a BN's running statistics (the deploy network's).
    before = net.bn.running_mean.clone()
    net(x)
    assert torch.equal(net.bn.running_mean, before)


def test_a_linear_layer_inside_the_network_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(64, 8),
                        nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match='2 is a Linear layer inside'):
        prepare_qat(net, lambda m: m(torch.zeros(1, 3, 6, 6)))


def test_an_fp32_checkpoint_loads_into_a_qat_model():
    from mmengine.config import Config

    from repnas_mm.models.loading import load_checked
    from repnas_mm.quant import prepare_from_config
    from repnas_mm.deploy.model import build_model_unchecked
    from .conftest import REPO
    cfg = Config.fromfile(REPO / 'configs/demo/odbb_fmnist_qat_cls.py')
    fp32 = build_model_unchecked(Config.fromfile(
        REPO / 'configs/demo/odbb_fmnist_cls.py'))
    qat = build_model_unchecked(cfg)
    assert len(quantized_layers(qat)) == 7  # the head's fc stays fp32
    assert load_checked(qat, fp32.state_dict(), 'fp32', 'qat') == 0
    with pytest.raises(ValueError, match="unknown quantize option"):
        bad = copy.deepcopy(cfg)
        bad.quantize = dict(probe=32)
        prepare_from_config(fp32, bad)


def test_stripping_the_quantizers_gives_the_fp32_model_back():
    net = randomize_bn(_Detector()).eval()
    keys = set(net.state_dict())
    x = torch.randn(2, 3, 16, 16)
    ref = net(x)
    prepare_qat(net, lambda m: m(torch.zeros(1, 3, 16, 16)))
    calibrate(net, [x], lambda m, b: m(b))
    strip_quantization(net)
    assert set(net.state_dict()) == keys and not quantized_layers(net)
    for got, want in zip(net(x), ref):
        assert torch.equal(got, want)  # every module's own forward again


@pytest.mark.slow
def test_qat_deploys_a_converted_residual_network(cifar10_tiny, tmp_path):
    """A network this project did not build: mmpretrain's CIFAR ResNet-18,
    its Conv+BN pairs converted to ODBBs (residual adds, downsampling
    shortcuts; fusion gives Conv+BN pairs back). QAT through tools/train.py,
    then tools/deploy.py --int8 with the trained scales."""
    import json

    from .conftest import REPO, cls_data_options, run_tool
    config = tmp_path / 'qat.py'
    config.write_text(f"""_base_ = ['{REPO}/configs/dyrep_resnet18_cifar10.py',
         '{REPO}/configs/_base_/settings/qat.py']
quantize = dict(probe_size=32)
custom_hooks = [_base_.qat_hook]
optim_wrapper = _base_.qat_sgd_optim_wrapper
train_cfg = dict(max_epochs=1)
param_scheduler = dict(T_max=1)
train_dataloader = dict(batch_size=8)
""")
    options = ['--cfg-options', *cls_data_options(cifar10_tiny)]
    proc = run_tool('tools/train.py', config, '--work-dir', tmp_path / 'w',
                    *options)
    # 17 ODBBs and the shortcuts' 3 convs; the fc is the output layer.
    assert 'QAT: 20 quantized layers' in proc.stdout + proc.stderr
    out = tmp_path / 'deploy'
    run_tool('tools/deploy.py', config, tmp_path / 'w' / 'epoch_1.pth',
             '--work-dir', out, '--int8', '--int8-tolerance', '100',
             '--num-images', '2', *options)
    result = json.loads((out / 'deploy_result.json').read_text())
    assert result['fused_error'] < 1e-4
    assert result['int8']['calibration']['method'] == 'trained (QAT)'
    # The fused checkpoint and config are the fp32 ones.
    assert 'quantize' not in (out / 'qat_deploy.py').read_text()
