"""convert_to_odbb on module layouts where a conv and its BN are not siblings,
on convs with a bias, on outputs read twice; and the checks that catch a
wrong pairing (they perturb the BN statistics, or they would see nothing).

Every model here grows every legal branch and is fused; in float64 with
trained-like BN statistics, the fused model equals the unfused one and has
the stock state dict, which loads strictly into a fresh stock model.
"""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repnas_mm.rep import (ODBB, FusionError, convert_to_odbb, grow,
                           reparameterize_model)
from repnas_mm.rep.convert import NormTail
from repnas_mm.rep.outputs import set_trained_like_norms, trained_like_norms
from repnas_mm.rep.pairs import trace_conv_bn_pairs

from .equivalence import assert_close_rel

F64_TOL = 1e-10


def conv3(cin, cout, bias=False, stride=1):
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)


class DeepStem(nn.Module):
    """timm's deep stem (resnet26d): the stem's last conv is normalized by
    a BN one level up, beside the Sequential."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(conv3(3, 8, stride=2), nn.BatchNorm2d(8),
                                   nn.ReLU(), conv3(8, 8))
        self.bn1 = nn.BatchNorm2d(8)

    def forward(self, x):
        return F.relu(self.bn1(self.conv1(x)))


class TwoLists(nn.Module):
    """Res2Net: convs in one ModuleList, their BNs in another."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([conv3(4, 4), conv3(4, 4, stride=2)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(4), nn.BatchNorm2d(4)])

    def forward(self, x):
        a, b = x.split(4, dim=1)
        a = F.relu(self.bns[0](self.convs[0](a)))
        b = F.relu(self.bns[1](self.convs[1](b + a)))
        return torch.cat([F.avg_pool2d(a, 2), b], 1)


class PreAct(nn.Module):
    """DPN's BnActConv2d: BN, ReLU, conv. Its conv's output is normalized
    by the *next* unit's ``bn``: an attribute of the same name as this
    unit's own."""

    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.conv = conv3(c, c)

    def forward(self, x):
        return self.conv(F.relu(self.bn(x)))


def pre_act_net():
    return nn.Sequential(conv3(3, 8), PreAct(8), PreAct(8),
                         nn.BatchNorm2d(8))


def vgg_bn():
    """torchvision/timm VGG-BN: every conv has a bias before its BN."""
    return nn.Sequential(conv3(3, 8, bias=True), nn.BatchNorm2d(8),
                         nn.ReLU(), conv3(8, 8, bias=True, stride=2),
                         nn.BatchNorm2d(8))


LAYOUTS = {
    'deep_stem': (DeepStem, 3, ['conv1.0', 'conv1.3']),
    'two_lists': (TwoLists, 8, ['convs.0', 'convs.1']),
    'pre_activation': (pre_act_net, 3, ['0', '1.conv', '2.conv']),
    'conv_bias': (vgg_bn, 3, ['0', '3']),
}


@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_layouts_convert_grow_and_fuse_exactly(layout):
    build, cin, names = LAYOUTS[layout]
    torch.manual_seed(0)
    model = build().double().eval()
    x = torch.randn(2, cin, 16, 16, dtype=torch.float64)
    set_trained_like_norms(model, x, seed=1)
    stock_keys = list(model.state_dict())
    with torch.no_grad():
        reference = model(x)
    assert convert_to_odbb(model, x[:1]) == names
    with torch.no_grad():
        assert_close_rel(model(x), reference, F64_TOL)
    for block in [m for m in model.modules() if isinstance(m, ODBB)]:
        grow(block, [n for n in block.branch_names if n != 'kxk'], 0.3)
    set_trained_like_norms(model, x, seed=2)  # branch BNs too
    with torch.no_grad():
        grown = model(x)
    fused = reparameterize_model(model, example=x, rtol=F64_TOL)
    assert not any(isinstance(m, (ODBB, NormTail)) for m in fused.modules())
    assert list(fused.state_dict()) == stock_keys
    fresh = build().double().eval()
    fresh.load_state_dict(fused.state_dict(), strict=True)
    with torch.no_grad():
        assert_close_rel(fresh(x), grown, F64_TOL)


def test_a_conv_bias_folds_exactly_in_training_too():
    """BN(Wx + b) with batch statistics is BN(Wx): the bias folds into the
    running mean, and the running statistics track alike."""
    torch.manual_seed(0)
    stock = vgg_bn().double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    set_trained_like_norms(stock, x)
    converted = copy.deepcopy(stock)
    convert_to_odbb(converted, x[:1])
    stock.train(), converted.train()
    assert_close_rel(converted(x), stock(x), F64_TOL)  # one training step
    stock.eval(), converted.eval()
    assert_close_rel(converted(x), stock(x), F64_TOL)


class ReadTwice(nn.Module):
    """A conv output that a BN and a residual both read: moving the BN
    into the conv would change the residual."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = conv3(4, 4), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class SharedConv(nn.Module):
    """One conv run twice, each output with its own BN."""

    def __init__(self):
        super().__init__()
        self.conv = conv3(4, 4)
        self.bn_a, self.bn_b = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn_a(self.conv(x)) * self.bn_b(self.conv(x.flip(-1)))


class ReadOutsideTorch(nn.Module):
    """Reads the conv output through Python (``tolist``), which no trace of
    torch functions sees: only the numeric check can refuse it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = conv3(4, 4), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        side = torch.tensor(y.tolist(), dtype=y.dtype)
        return self.bn(y) + side


@pytest.mark.parametrize('build,why', [
    (ReadTwice, 'its output is read by more than bn'),
    (SharedConv, 'read by 2 BatchNorms (bn_a, bn_b)'),
])
def test_a_conv_read_by_more_than_its_bn_is_refused_by_the_trace(build, why):
    model = build().eval()
    x = torch.zeros(1, 4, 8, 8)
    pairs, refused = trace_conv_bn_pairs(model, x)
    assert pairs == [] and refused == {'conv': why}
    with pytest.warns(UserWarning, match='no single BatchNorm reads'):
        assert convert_to_odbb(model, x) == []
    assert type(model.conv) is nn.Conv2d


def test_the_check_perturbs_the_statistics_or_it_would_see_nothing():
    model = ReadOutsideTorch().double().eval()
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    assert trace_conv_bn_pairs(model, x) == ([('conv', 'bn')], {})
    # A fresh BN is an identity up to eps: moving it changes almost
    # nothing, so an unperturbed check would have accepted this pair.
    moved = copy.deepcopy(model)
    moved.conv = nn.Sequential(moved.conv, moved.bn)
    moved.bn = nn.Identity()
    with torch.no_grad():
        assert_close_rel(moved(x), model(x), 1e-4)
    state = copy.deepcopy(model.state_dict())
    with pytest.warns(UserWarning, match='converting them changed the '
                      'outputs'):
        assert convert_to_odbb(model, x) == []
    assert type(model.conv) is nn.Conv2d and type(model.bn) is nn.BatchNorm2d
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())


def test_conversion_leaves_the_statistics_as_they_were():
    torch.manual_seed(0)
    model = DeepStem().eval()
    x = torch.randn(1, 3, 16, 16)
    set_trained_like_norms(model, x, seed=3)
    stem_bn, bn1 = model.conv1[1], model.bn1
    before = {k: v.clone() for k, v in bn1.state_dict().items()}
    convert_to_odbb(model, x)
    norm = model.conv1[3].branches['kxk'].bn  # bn1's statistics moved here
    assert all(torch.equal(norm.state_dict()[k], before[k])
               for k in norm.state_dict())
    assert all(torch.equal(bn1.state_dict()[k], v)
               for k, v in before.items())
    assert isinstance(model.conv1[1], nn.Identity) and \
        isinstance(model.bn1, nn.Identity)
    assert model.conv1[0].stock_pair['norm'] is stem_bn


def test_trained_like_norms_restores_every_tensor():
    model = vgg_bn()
    x = torch.randn(1, 3, 8, 8)
    state = copy.deepcopy(model.state_dict())
    with trained_like_norms(model, x):
        bn = model[1]
        assert not torch.allclose(bn.running_var, torch.ones(8))
        assert not torch.allclose(bn.weight, torch.ones(8))
    assert all(torch.equal(model.state_dict()[k], v)
               for k, v in state.items())


def test_reparameterize_model_with_an_example_raises_on_a_broken_pairing():
    torch.manual_seed(0)
    model = pre_act_net().eval()
    x = torch.randn(2, 3, 16, 16)
    convert_to_odbb(model, x[:1])
    set_trained_like_norms(model, x)
    fused = reparameterize_model(model, example=x)  # the right pairing
    with torch.no_grad():
        assert_close_rel(fused(x), model(x), 1e-4)
    # What restore_conv_bn did before issue 27: put a BN back under its
    # conv's parent, over the pre-activation BN of the same name.
    block = model[1].conv
    block.stock_pair['bn_parent'] = model[1]
    for inplace in (False, True):
        with pytest.raises(FusionError, match=r'relative error .* > 0\.0001; '
                           r'first differing module: 1 \(PreAct'):
            reparameterize_model(copy.deepcopy(model), inplace=inplace,
                                 example=x)
    # Without an example nothing is checked (the old behaviour).
    reparameterize_model(model)


def test_reparameterize_model_reports_a_fused_model_that_fails_to_run():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv3(3, 4)

        def switch_to_deploy(self):
            self.conv = conv3(5, 4)  # a fusion that loses the shape

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(FusionError, match='fails on the example: '
                       'RuntimeError'):
        reparameterize_model(Broken(), example=torch.zeros(1, 3, 8, 8))


def test_a_part_fused_alone_keeps_its_fused_blocks():
    """A converted model's backbone fused by itself: a BN whose place lies
    outside it cannot be restored; its fused block computes the same."""
    torch.manual_seed(0)
    model = DeepStem().double().eval()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    convert_to_odbb(model, x)
    set_trained_like_norms(model, x)
    with torch.no_grad():
        reference = model.bn1(model.conv1(x))
    stem = reparameterize_model(model.conv1)
    assert isinstance(stem[3], ODBB) and stem[3].fused_conv is not None
    assert type(stem[0]) is nn.Conv2d  # its BN is inside the stem
    with torch.no_grad():
        assert_close_rel(model.bn1(stem(x)), reference, F64_TOL)
