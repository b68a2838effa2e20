"""RefConv (weight re-parameterization of trained convs): conversion keeps
outputs, training moves only W_r, fusion is exact, stock layouts round-trip."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import repnas_mm  # noqa: F401
from repnas_mm.models import ODBBNet
from repnas_mm.rep import (RefConv, convert_to_refconv, reparameterize_model)
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
