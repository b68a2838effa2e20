"""ODBBNet: layouts, branch specs, fusion of the whole network, RepVGG parity."""
import json

import pytest
import torch
import torch.nn as nn

from repnas_mm.models import ODBBNet
from repnas_mm.rep import ODBB, reparameterize_model

from .equivalence import assert_close_rel, randomize_bn

REPVGG_ARCHS = ('A0', 'A1', 'A2', 'B0', 'B1', 'B1g2', 'B1g4', 'B2', 'B2g2',
                'B2g4', 'B3', 'B3g2', 'B3g4')


def shapes(module):
    return [tuple(v.shape) for v in module.state_dict().values()]


@pytest.mark.parametrize('arch', REPVGG_ARCHS)
def test_deploy_form_matches_repvgg_layer_for_layer(arch):
    """deploy=True builds, tensor for tensor, the shapes of RepVGG deploy."""
    from mmpretrain.models import RepVGG
    ours = ODBBNet(arch, deploy=True)
    stock = RepVGG(arch, deploy=True)
    assert shapes(ours) == shapes(stock)
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in stock.parameters())


def test_vgg16_layout_has_thirteen_convs():
    net = ODBBNet('vgg16', branches='plain')
    assert len(net.blocks()) == 13
    out = net(torch.randn(2, 3, 32, 32))
    assert len(out) == 1 and out[0].shape == (2, 512, 2, 2)


def test_whole_a0_full_fuses_exactly():
    torch.manual_seed(0)
    net = randomize_bn(ODBBNet('A0', branches='full')).eval()
    assert len(net.blocks()) == 22
    x = torch.randn(2, 3, 64, 64)
    fused = reparameterize_model(net)
    with torch.no_grad():
        ref, got = net(x)[0], fused(x)[0]
    assert got.shape == (2, 1280, 2, 2)
    assert_close_rel(got, ref)
    # The fused network loads strictly into a deploy=True one.
    fresh = ODBBNet('A0', deploy=True).eval()
    fresh.load_state_dict(fused.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x)[0], got)


@pytest.mark.parametrize('preset', ['plain', 'repvgg', 'acb', 'dbb', 'full'])
def test_any_preset_fuses_to_repvgg_a0_size(preset):
    """Fused ODBB-A0 classifier: 8.30 M parameters, RepVGG-A0's FLOPs."""
    from mmengine.analysis import get_model_complexity_info
    from mmpretrain.models import RepVGG

    def classifier(backbone):
        return nn.Sequential(backbone, _Last(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(1280, 1000))

    fused = classifier(
        reparameterize_model(ODBBNet('A0', branches=preset), inplace=True))
    stock = classifier(RepVGG('A0', deploy=True))
    n_fused = sum(p.numel() for p in fused.parameters())
    assert n_fused == sum(p.numel() for p in stock.parameters())
    # 8.30 M in the RepVGG/RepNAS papers (truncated), 8.31 M in mmpretrain's zoo.
    assert n_fused == 8_309_384
    assert shapes(fused) == shapes(stock)
    flops = [
        get_model_complexity_info(
            m.eval(), input_shape=(3, 224, 224), show_table=False,
            show_arch=False)['flops'] for m in (fused, stock)
    ]
    assert flops[0] == flops[1] and flops[0] > 1e9


class _Last(nn.Module):

    def forward(self, feats):
        return feats[-1]


def test_branch_specs(tmp_path):
    # A flat list is filtered per block like a preset: no identity where
    # stride is 2 or channels change.
    net = ODBBNet('A0', branches=['kxk', 'identity'])
    kept = [b.branch_names for b in net.blocks()]
    assert kept[0] == ('kxk', )  # the stem: 3 -> 48, stride 2
    assert kept[2] == ('kxk', 'identity')  # stage_1.1: 48 -> 48
    # A per-block list is strict.
    per_block = [('kxk', )] * 22
    per_block[2] = ('1x1', 'identity')
    assert ODBBNet('A0', branches=per_block).blocks()[2].branch_names == \
        ('1x1', 'identity')
    per_block[0] = ('identity', )
    with pytest.raises(ValueError, match="'identity' is not legal"):
        ODBBNet('A0', branches=per_block)
    with pytest.raises(ValueError, match='21 branch lists given for 22'):
        ODBBNet('A0', branches=[('kxk', )] * 21)
    with pytest.raises(ValueError, match='unknown ODBBNet arch'):
        ODBBNet('A9')
    with pytest.raises(ValueError, match='no legal branch'):
        ODBBNet('A0', branches=['identity'])


def test_searched_architecture_file_rebuilds_the_network(tmp_path):
    blocks = [['kxk']] * 22
    blocks[5] = ['1x1', '1x1_avg', 'identity']
    path = tmp_path / 'searched_arch.json'
    path.write_text(json.dumps({'arch': 'A0', 'budget': 24,
                                'blocks': blocks}))
    net = ODBBNet('A0', branches=str(path))
    assert net.blocks()[5].branch_names == ('1x1', '1x1_avg', 'identity')
    assert sum(len(b.branch_names) for b in net.blocks()) == 24
    with pytest.raises(ValueError, match="searched on 'A0', not 'A1'"):
        ODBBNet('A1', branches=str(path))


def test_random_preset_meets_its_budget():
    a = ODBBNet('A0', branches=dict(type='random', budget=40, seed=1))
    b = ODBBNet('A0', branches=dict(type='random', budget=40, seed=1))
    kept = [blk.branch_names for blk in a.blocks()]
    assert kept == [blk.branch_names for blk in b.blocks()]
    assert sum(len(k) for k in kept) == 40


def test_options_out_indices_frozen_norm_eval_with_cp():
    torch.manual_seed(0)
    net = ODBBNet('A0', branches='repvgg', out_indices=(1, 3))
    outs = net(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [96, 1280]
    with pytest.raises(ValueError, match='out of range'):
        ODBBNet('A0', out_indices=(4, ))

    frozen = ODBBNet('A0', branches='repvgg', frozen_stages=1).train()
    assert not any(p.requires_grad for p in frozen.stem.parameters())
    assert not any(p.requires_grad for p in frozen.stage_1.parameters())
    assert all(p.requires_grad for p in frozen.stage_2.parameters())
    assert not frozen.stage_1.training and frozen.stage_2.training

    norm_eval = ODBBNet('A0', branches='repvgg', norm_eval=True).train()
    assert all(not m.training for m in norm_eval.modules()
               if isinstance(m, nn.BatchNorm2d))

    # Gradient checkpointing changes memory, not results.
    plain = ODBBNet('A0', branches='dbb').train()
    cp = ODBBNet('A0', branches='dbb', with_cp=True).train()
    cp.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    for net_ in (plain, cp):
        net_(x)[0].square().mean().backward()
    assert torch.allclose(plain.stem.conv.weight.grad,
                          cp.stem.conv.weight.grad, rtol=1e-4, atol=1e-6)


def test_built_from_both_registries():
    from mmdet.registry import MODELS as DET
    from mmpretrain.registry import MODELS as CLS
    for registry in (CLS, DET):
        net = registry.build(dict(type='ODBBNet', arch='A0', branches='acb'))
        assert isinstance(net, ODBBNet)
        assert all(isinstance(b, ODBB) for b in net.blocks())


def test_switch_to_deploy_on_backbone_is_idempotent():
    net = randomize_bn(ODBBNet('A0', branches='full')).eval()
    net.switch_to_deploy()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.switch_to_deploy()
    reparameterize_model(net, inplace=True)
    assert net.deploy
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
