"""timm models: ODBBs inside them (DyRep) and timm's own re-parameterization walker.

timm is where many users keep their CNNs. Its norms carry their activation
(``BatchNormAct2d``), its convs may have a forward of their own
(``Conv2dSame``), and its RepVGG/MobileOne blocks fuse themselves; its
``reparameterize_model`` calls ``fuse()`` expecting a module back. Every case
runs on random weights with randomized BN statistics, in eval mode.

Whole trained timm models are compared in float64: a deep network with
random weights amplifies fp32 rounding (absorbing the stem branches of a
trained MobileNetV2 moves its logits by 3e-5 in fp32, 1e-13 in float64), and
the claim here is the algebra; fp32 exactness per block is
tests/test_rep_block.py's.
"""
import pytest
import timm
import torch
import torch.nn as nn

from repnas_mm.rep import ODBB, reparameterize_model
from repnas_mm.rep.convert import (NormTail, convert_to_odbb,
                                   find_conv_bn_pairs)
from repnas_mm.rep.surgery import absorb, grow
from repnas_mm.search.dyrep import DyRep

from .equivalence import assert_close_rel, randomize_bn

timm_reparameterize = timm.utils.model.reparameterize_model

SIZE = 32
# name: KxK Conv+BN pairs converted (all of them: every one is plain).
FAMILIES = {
    'resnet18': 17,  # zero-initialised last BN of every residual block
    'mobilenetv2_050': 18,  # BatchNormAct2d with ReLU6, depthwise KxK
    'efficientnet_b0': 17,  # BatchNormAct2d with SiLU, 5x5 depthwise
    'regnetx_002': 14,  # grouped 3x3
}


def _model(name, dtype=torch.float32):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False,
                             num_classes=10).to(dtype).eval()


def _train_steps(model, steps=2):
    """A couple of SGD steps, so no branch is still at its initial values."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        x = torch.randn(4, 3, SIZE, SIZE, dtype=next(model.parameters()).dtype)
        model(x).square().mean().backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize('name', list(FAMILIES))
def test_dyrep_growth_and_fusion_are_exact_on_timm_models(name):
    model = _model(name, torch.float64)
    stock_keys = list(model.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
    randomize_bn(model)
    if name == 'resnet18':  # keep timm's zero-initialised residual BNs
        for block in (model.layer1, model.layer2, model.layer3, model.layer4):
            for basic in block:
                nn.init.zeros_(basic.bn2.weight)
    with torch.no_grad():
        reference = model(x)
    converted = convert_to_odbb(model, x[:1])
    assert len(converted) == FAMILIES[name]
    with torch.no_grad():
        assert_close_rel(model(x), reference)
    # Every branch of a block ends in a *linear* BN: activations stay after
    # the block (NormTail), never inside a branch.
    blocks = [m for m in model.modules() if isinstance(m, ODBB)]
    for block in blocks:
        for branch in block.branches.values():
            for m in branch.modules():
                assert type(m) in (type(branch), nn.BatchNorm2d), type(m)
                assert all(p.dtype == torch.float64 for p in m.parameters())
    if name != 'resnet18':
        assert any(isinstance(m, NormTail) for m in model.modules())
    # DyRep growth: every branch of every block, function unchanged.
    for block in blocks:
        grow(block, [n for n in block.branch_names if n != 'kxk'],
             bn_scale=0.3)
    with torch.no_grad():
        assert_close_rel(model(x), reference)
    _train_steps(model)
    with torch.no_grad():
        trained = model(x)
    # De-parameterization: give some branches back to the main conv.
    for block in blocks[::2]:
        absorb(block, ['1x1', '1x1_avg'])
    with torch.no_grad():
        assert_close_rel(model(x), trained)
        trained = model(x)
    # Our fusion gives the stock timm layout back; it loads strictly.
    fused = reparameterize_model(model)
    assert not any(isinstance(m, (ODBB, NormTail)) for m in fused.modules())
    assert list(fused.state_dict()) == stock_keys
    fresh = _model(name, torch.float64)
    fresh.load_state_dict(fused.state_dict(), strict=True)
    with torch.no_grad():
        assert_close_rel(fresh(x), trained)
        # timm's own walker fuses the converted model too.
        assert_close_rel(timm_reparameterize(model)(x), trained)


def test_dyrep_policy_runs_on_a_timm_model():
    model = _model('mobilenetv2_050')
    convert_to_odbb(model, torch.zeros(1, 3, SIZE, SIZE))
    randomize_bn(model)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        before = model(x)
    policy = DyRep(model, metric='synflow', num_grow=2, input_size=SIZE)
    policy.start()
    assert policy.num_branches() == 18
    events = policy.step()
    assert len(events['grown']) == 2 and policy.num_branches() > 18
    model.eval()
    with torch.no_grad():
        assert_close_rel(model(x), before)
    policy.close()


def test_timm_walker_fuses_odbbnet():
    from repnas_mm.models import ODBBNet
    torch.manual_seed(0)
    net = randomize_bn(ODBBNet('A0', branches='full')).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        reference = net(x)
        ours = reparameterize_model(net)(x)
        theirs_model = timm_reparameterize(net)
        theirs = theirs_model(x)
    assert all(b.fused_conv is not None for b in theirs_model.blocks())
    for a, b, c in zip(theirs, ours, reference):
        assert_close_rel(a, c)
        assert_close_rel(b, c)
    assert not hasattr(ODBB, 'fuse')  # timm would expect a module from it


def test_self_reparameterizing_blocks_and_special_convs_are_left_alone():
    # timm's RepVGG fuses itself (and reads its convs): nothing converted,
    # one warning, and timm's own fusion still works.
    model = _model('repvgg_a0')
    randomize_bn(model)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        reference = model(x)
    with pytest.warns(UserWarning, match='re-parameterize themselves'):
        assert convert_to_odbb(model, torch.zeros(1, 3, SIZE, SIZE)) == []
    with torch.no_grad():
        assert_close_rel(timm_reparameterize(model)(x), reference)
    # Conv2dSame (TF 'same' padding) has a forward of its own: left alone.
    model = _model('tf_efficientnet_b0')
    with pytest.warns(UserWarning,
                      match='Conv2dSame has a forward of its own'):
        converted = convert_to_odbb(model, torch.zeros(1, 3, SIZE, SIZE))
    assert converted and all(
        type(model.get_submodule(n)) is ODBB for n in converted)


class _ScaledNorm(nn.BatchNorm2d):
    """A BatchNorm subclass with a non-linearity and no drop/act modules."""

    def forward(self, x):
        return super().forward(x).clamp(min=0)


def test_unknown_nonlinear_norm_leaves_its_conv_alone():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False),
                          _ScaledNorm(8), nn.Conv2d(8, 8, 3, padding=1,
                                                    bias=False),
                          nn.BatchNorm2d(8))
    with pytest.warns(UserWarning,
                      match=r'\(_ScaledNorm is no linear BatchNorm\): 0$'):
        converted = convert_to_odbb(model, torch.zeros(1, 3, 8, 8))
    assert converted == ['2']
    assert type(model[0]) is nn.Conv2d and type(model[1]) is _ScaledNorm


class _TwoReaders(nn.Module):
    """One conv output read by two BNs: no single pair to convert."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn_a, self.bn_b = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn_a(y) + self.bn_b(y)


def test_pairs_are_one_conv_one_bn_and_never_a_reused_id():
    assert find_conv_bn_pairs(_TwoReaders(), torch.zeros(1, 3, 8, 8)) == []
    # timm's RepVGG: an identity BN reads a block's input, which is no
    # conv's output, although an id() of a freed conv output may repeat.
    model = _model('repvgg_a0')
    pairs = find_conv_bn_pairs(model, torch.zeros(1, 3, SIZE, SIZE))
    assert len(pairs) == 44  # a kxk and a 1x1 ConvNormAct in 22 blocks
    assert all(bn.rpartition('.')[0] == conv.rpartition('.')[0]
               for conv, bn in pairs)
