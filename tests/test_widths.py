"""Exact channel removal (issue 32, the part that ships narrow): a
full-width network whose block outputs are gated to 0/1 per channel equals,
on the kept channels, the narrow fused network (eval mode, randomized BN
statistics)."""
import os.path as osp

import pytest
import torch

from repnas_mm.models.backbones.odbbnet import ODBBNet
from repnas_mm.models.widths import narrow_odbbnet
from repnas_mm.rep import FORMS, build_odbb
from repnas_mm.rep.branches import legal_branches
from repnas_mm.rep.widths import balanced_top, select_channels

from .equivalence import FP32_TOL, randomize_bn, rel_error
from .test_rep_block import all_subsets


@pytest.mark.parametrize('groups', [1, 2])
@pytest.mark.parametrize('stride', [1, 2])
def test_every_subset_narrows_exactly(stride, groups):
    """Each block, every legal branch subset (identity included where
    legal): the fused conv keeping some output rows and input columns
    computes the block's kept outputs from the kept inputs (the others
    zero, as a gated previous block leaves them)."""
    gen = torch.Generator().manual_seed(0)
    worst, checked = 0.0, 0
    for cin, cout in [(8, 12), (8, 8)]:
        subsets = all_subsets(legal_branches(cin, cout, stride))
        if cin == cout:
            subsets = [s for s in subsets if 'identity' in s]
        for i, subset in enumerate(subsets):
            torch.manual_seed(i)
            block = randomize_bn(build_odbb(cin, cout, 3, stride, groups, subset,
                                            weight_sharing=False), seed=i).eval()
            keep_in = balanced_top(torch.rand(cin, generator=gen), cin // 2, groups)
            keep_out = balanced_top(torch.rand(cout, generator=gen), cout // 2, groups)
            x = torch.randn(2, cin, 7, 7, generator=gen)
            dead = torch.ones(cin, dtype=torch.bool)
            dead[keep_in] = False
            x[:, dead] = 0
            with torch.no_grad():
                ref = block(x)[:, keep_out]
                block.switch_to_deploy()
                narrow = select_channels(block.fused_conv, keep_out, keep_in)
                got = narrow(x[:, keep_in])
            assert narrow.groups == groups and got.shape == ref.shape
            worst = max(worst, rel_error(got, ref))
            checked += 1
    assert checked == (127 if stride == 1 else 63)  # 6 or 7 legal branches
    assert worst <= FP32_TOL, worst


ARCH = dict(stem_channels=8, channels=(8, 16, 16), num_blocks=(2, 2, 1),
            strides=(1, 2, 2), group_layers=(2, 4), groups=2, stem_stride=1)


def gated(net, gen, ratio=0.5):
    """0/1 gates keeping ``ratio`` of every block's channels (balanced in
    each group of the next grouped block, here 2); the kept indices."""
    keep, gates = [], []
    for layer in net.layers():
        c = layer.conv.out_channels
        k = balanced_top(torch.rand(c, generator=gen), int(c * ratio), 2)
        gate = torch.zeros(c)
        gate[k] = 1.0
        keep.append(k)
        gates.append(gate)
    net.set_channel_gates(gates)
    return keep


@pytest.mark.parametrize('form', list(FORMS))
def test_a_gated_network_equals_its_narrow_fused_network(form):
    torch.manual_seed(0)
    net = randomize_bn(ODBBNet(ARCH, branches='full', form=form,
                               weight_sharing=form == 'standard'))
    gen = torch.Generator().manual_seed(1)
    for block in net.blocks():  # some branches pruned, as a search leaves
        names = block.branch_names
        block.active = [n for n in names
                        if torch.rand(1, generator=gen) < 0.6] or names[:1]
    keep = gated(net, gen)
    net.eval()
    x = torch.randn(2, 3, 16, 16, generator=gen)
    with torch.no_grad():
        ref = net(x)[-1]
        narrow = narrow_odbbnet(net, keep).eval()
        got = narrow(x)[-1]
    assert narrow.widths == [4, 4, 4, 8, 8, 8]
    assert narrow.out_channels == [8]
    assert rel_error(got, ref[:, keep[-1]]) <= FP32_TOL
    dead = torch.ones(ref.shape[1], dtype=torch.bool)
    dead[keep[-1]] = False
    assert ref[:, dead].abs().max() == 0
    # The narrow fused network loads into its config's structure strictly.
    twin = ODBBNet(ARCH, widths=narrow.widths, deploy=True,
                   branches=[list(b.branch_names) for b in narrow.blocks()])
    twin.load_state_dict(narrow.state_dict(), strict=True)
    # Its parameters are what the kept channels need, no more.
    assert sum(p.numel() for p in narrow.parameters()) < 0.3 * sum(
        p.numel() for p in ODBBNet(ARCH, deploy=True).parameters())


def test_widths_are_checked_and_the_identity_follows_them():
    with pytest.raises(ValueError, match='3 widths given for 6 blocks'):
        ODBBNet(ARCH, widths=[8, 8, 8])
    with pytest.raises(ValueError, match='width 5 of block 2 is not a '
                       r'positive multiple of its groups \(2\)'):
        ODBBNet(ARCH, widths=[8, 8, 5, 16, 16, 16])
    widths = [8, 6, 6, 16, 16, 12]
    net = ODBBNet(ARCH, widths=widths)
    assert net.widths == widths and net.out_channels == [12]
    legal = [('identity' in b.branch_names) for b in net.blocks()]
    # identity only where in == out and stride 1: blocks 2 (6 -> 6) and 4
    # (16 -> 16); at full width block 1 (8 -> 8) had one too.
    assert legal == [False, False, True, False, True, False]
    # A searched architecture keeping identity everywhere it was legal at
    # full width: dropped where the widths now differ, with a warning.
    full = ODBBNet(ARCH, branches='full')
    lists = [list(b.branch_names) for b in full.blocks()]
    with pytest.warns(UserWarning, match='identity branch of 1 block'):
        net = ODBBNet(ARCH, widths=widths, branches=lists)
    assert [('identity' in b.branch_names) for b in net.blocks()] == legal
    with pytest.raises(ValueError, match='as many in each of the 2 groups'):
        select_channels(torch.nn.Conv2d(8, 16, 3, groups=2),
                        torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match='multiples of groups=2'):
        balanced_top(torch.rand(8), 3, 2)


DEMO = dict(name='demo', stem_channels=16, channels=(16, 32, 64, 128),
            num_blocks=(1, 2, 2, 1), strides=(2, 2, 2, 2))


def test_what_reads_a_narrow_backbone_follows_its_widths(tmp_path):
    from repnas_mm.config import follow_backbone_widths, read_config
    widths = [8, 8, 16, 24, 32, 48, 64]
    model = dict(backbone=dict(type='ODBBNet', arch=DEMO, widths=widths),
                 neck=dict(type='CTResNetNeck', in_channels=128),
                 bbox_head=dict(in_channels=32))
    follow_backbone_widths(model)
    assert model['neck']['in_channels'] == 64  # the first reader only
    assert model['bbox_head']['in_channels'] == 32
    # Several outputs: a list, stage by stage (A0: 48, 96, 192, 1280).
    a0 = [8] + [16] * 2 + [24] * 4 + [40] * 14 + [320]
    model = dict(backbone=dict(type='ODBBNet', widths=a0,
                               out_indices=(1, 2, 3)),
                 neck=dict(in_channels=[96, 192, 1280]))
    follow_backbone_widths(model)
    assert model['neck']['in_channels'] == [24, 40, 320]
    # A reader the user set to anything but the full width is left alone,
    # and so is a full-width backbone.
    for model in (dict(backbone=dict(type='ODBBNet', arch=DEMO,
                                     widths=widths),
                       head=dict(in_channels=100)),
                  dict(backbone=dict(type='ODBBNet', arch=DEMO),
                       head=dict(in_channels=128))):
        before = model['head']['in_channels']
        follow_backbone_widths(model)
        assert model['head']['in_channels'] == before
    # Every tool reads configs through read_config: a CenterNet on a narrow
    # backbone, retrained, builds and runs with its neck on the narrow
    # width (the demo config, its searched branches dropped).
    cfg_path = tmp_path / 'narrow.py'
    cfg_path.write_text(
        "_base_ = '{}'\nmodel = dict(backbone=dict(branches='repvgg', "
        "widths={}))\n".format(
            osp.abspath('configs/demo/centernet_odbb_fmnist.py'), widths))
    cfg = read_config(str(cfg_path))
    assert cfg.model.neck.in_channels == 64
    from repnas_mm.deploy.model import build_model
    cfg.model.backbone.init_cfg = None
    detector = build_model(cfg).eval()
    with torch.no_grad():
        heatmaps = detector(torch.randn(1, 3, 64, 64), mode='tensor')
    assert heatmaps[0][0].shape == (1, 10, 16, 16)
