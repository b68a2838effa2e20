"""The quantization-friendly ODBB (QARepVGG's block for seven branches).

Its every-subset fusion is in test_rep_block's sweep; its RepNAS search and
INT8 deployment on real images in test_int8.
"""
import copy

import pytest
import torch

import repnas_mm  # noqa: F401
from repnas_mm.models import ODBBNet
from repnas_mm.rep import ODBB, reparameterize_model
from repnas_mm.rep.block import QuantFriendlyODBB
from repnas_mm.rep.convert import convert_to_odbb
from repnas_mm.rep.surgery import absorb, bn_scale_ratio, grow

from .equivalence import assert_close_rel, randomize_bn

DEMO_ARCH = dict(name='demo', stem_channels=16, channels=(16, 32, 64, 128),
                 num_blocks=(1, 2, 2, 1), strides=(2, 2, 2, 2))


def test_which_branches_lose_their_bn_and_the_post_bn():
    block = QuantFriendlyODBB(8, 8, 3, branches='full')
    NORM_FREE = QuantFriendlyODBB.NORM_FREE
    assert NORM_FREE == ('1x1', '1xk', 'kx1', 'identity')
    for name, branch in block.branches.items():
        assert (branch.bn is None) == (name in NORM_FREE), name
    assert block.branches['1x1_kxk'].bn_1x1 is not None
    assert isinstance(block.bn, torch.nn.BatchNorm2d)
    keys = set(block.state_dict())
    assert 'bn.weight' in keys and 'branches.kxk.bn.weight' in keys
    assert not any(k.startswith(('branches.1x1.bn', 'branches.identity.bn'))
                   for k in keys)
    # The standard block has no post-BN.
    assert ODBB(8, 8, 3, branches='full').bn is None


def test_a_bn_free_identity_passes_its_input_through():
    """QARepVGG's identity: exactly x in training and eval; a gate scales
    it; with a post-BN at identity statistics the block is x."""
    block = QuantFriendlyODBB(4, 4, 3, branches=['identity'])
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(block.branches['identity'](x), x)
    assert torch.equal(block.branches['identity'](x, gate=torch.tensor(.5)),
                       .5 * x)
    block.eval()
    with torch.no_grad():
        block.bn.running_var.fill_(1 - block.bn.eps)
        assert torch.equal(block(x), x)
        kernel, bias = block.kernel_bias()
    assert kernel[:, :, 1, 1].diagonal().eq(1).all() and bias.eq(0).all()


@pytest.mark.parametrize('weight_sharing', [True, False])
def test_gates_scale_the_bn_free_branches_and_fuse_exactly(weight_sharing):
    for seed, subset in enumerate([['1x1', 'identity'], 'full',
                                   ['kxk', '1xk', 'kx1'],
                                   ['1x1_avg', 'identity']]):
        torch.manual_seed(seed)
        block = randomize_bn(
            QuantFriendlyODBB(8, 8, 3, 1, 2, subset,
                              weight_sharing=weight_sharing), seed)
        gates = torch.rand(len(block.branch_names)) + 0.25
        x = torch.randn(2, 8, 7, 7)
        block.eval()
        with torch.no_grad():
            ungated = block(x)
            block.set_gates(gates)
            gated = block(x)
            # A gate of 2 everywhere doubles the sum before the post-BN.
            block.set_gates(torch.full_like(gates, 2.0))
            kernel, bias = block.kernel_bias()
            block.set_gates(None)
            k1, b1 = block.kernel_bias()
            block.set_gates(gates)
            block.switch_to_deploy()
            assert_close_rel(block(x), gated)
        assert not torch.allclose(gated, ungated)
        # The post-BN folds in after the gated sum: gates of 2 double the
        # fused kernel (2 * k_sum * gamma / sigma).
        assert torch.allclose(kernel, 2 * k1, atol=1e-6)


def test_gate_gradients_reach_every_active_branch():
    torch.manual_seed(0)
    block = QuantFriendlyODBB(8, 8, 3, branches='full')
    gates = torch.ones(len(block.branch_names), requires_grad=True)
    block.set_gates(gates)
    block.active = ['1x1', 'kxk', 'identity', 'kx1']
    block(torch.randn(4, 8, 6, 6)).pow(2).sum().backward()
    got = dict(zip(block.branch_names, gates.grad.abs().tolist()))
    for name in block.branch_names:
        assert (got[name] > 0) == (name in block.active), (name, got[name])


@pytest.mark.parametrize('names', [['1x1'], ['identity', '1xk'],
                                   ['1x1_kxk', 'kx1', '1x1_avg']])
def test_dyrep_growth_and_absorption_are_exact(names):
    torch.manual_seed(0)
    block = randomize_bn(
        QuantFriendlyODBB(8, 8, 3, 1, 2, 'full', weight_sharing=False))
    block.active = ['kxk']
    block.eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        fresh = {n: block.branches[n].weight.clone() for n in names
                 if getattr(block.branches[n], 'weight', None) is not None
                 and block.branches[n].bn is None}
        before = block(x)
        grow(block, names, bn_scale=0.01)
        assert set(block.active) == {'kxk', *names}
        for name, kernel in fresh.items():  # BN-free: the kernel scales
            assert torch.allclose(block.branches[name].weight, 0.01 * kernel)
        assert_close_rel(block(x), before)
        for name in names:
            ratio = bn_scale_ratio(block, name)
            assert 0 < ratio < float('inf'), (name, ratio)
            branch = block.branches[name]
            if getattr(branch, 'weight', None) is not None:
                branch.weight.normal_()  # as if trained
            randomize_bn(branch, seed=3)
        changed = block(x)
        absorb(block, names)
        assert block.active == ('kxk', )
        assert_close_rel(block(x), changed)


def test_odbbnet_fuses_and_checkpoints_say_which_form():
    from repnas_mm.models.loading import CheckpointMismatch, load_pretrained
    torch.manual_seed(0)
    net = randomize_bn(ODBBNet(DEMO_ARCH, branches='full',
                               form='quant_friendly'))
    assert all(b.form == 'quant_friendly' for b in net.blocks())
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)[-1]
        fused = reparameterize_model(copy.deepcopy(net))
        assert_close_rel(fused(x)[-1], ref)
    # The fused network is the standard one's fused network, key for key.
    deploy = ODBBNet(DEMO_ARCH, branches='full', deploy=True)
    deploy.load_state_dict(fused.state_dict(), strict=True)
    # A checkpoint names the form to build; deploy=True loads either.
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = f'{folder}/qf.pth'
        torch.save({'state_dict': net.state_dict()}, path)
        with pytest.raises(CheckpointMismatch, match="form='quant_friendly'"):
            load_pretrained(ODBBNet(DEMO_ARCH, branches='full'), path)
        load_pretrained(deploy, path)
    deploy.eval()
    with torch.no_grad():
        assert_close_rel(deploy(x)[-1], ref)


def test_stock_backbones_convert_to_quant_friendly_blocks_exactly():
    from mmpretrain.models import ResNet
    torch.manual_seed(0)
    stock = randomize_bn(ResNet(18))
    stock.eval()  # (mmpretrain backbones' train() returns None)
    model = copy.deepcopy(stock)
    converted = convert_to_odbb(model, form='quant_friendly')  # checks itself
    assert len(converted) == 17
    blocks = [m for m in model.modules() if isinstance(m, ODBB)]
    assert all(b.form == 'quant_friendly' and b.bn is not None for b in blocks)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    for block in blocks[::4]:
        grow(block, ['1x1', '1x1_kxk'])
    with torch.no_grad():
        assert_close_rel(model(x)[-1], stock(x)[-1])
