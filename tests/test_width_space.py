"""WidthSpace (issue 32): widths under a latency budget, from a table."""
import pytest
import torch

from repnas_mm.deploy.latency_table import multiply_add_table
from repnas_mm.models.backbones.odbbnet import ODBBNet
from repnas_mm.models.widths import narrow_odbbnet
from repnas_mm.search.width_space import WidthSpace

from .equivalence import FP32_TOL, randomize_bn, rel_error

ARCH = dict(stem_channels=16, channels=(16, 32, 64), num_blocks=(2, 2, 1),
            strides=(1, 2, 2), group_layers=(2, 4), groups=2, stem_stride=1)


def space_for(net, **kwargs):
    table = multiply_add_table(net, 16, num_classes=10)
    return WidthSpace(net, table, 16, num_classes=10, **kwargs)


def test_widths_fit_the_budget_and_the_grid():
    net = ODBBNet(ARCH)
    space = space_for(net, budget_ratio=0.5)
    full = space.predicted_ms(space.full)
    assert space.budget_ms == pytest.approx(0.5 * full)
    assert space.steps == [8, 8, 8, 8, 8, 8]  # lcm(8, groups 2)
    assert space.floors == [8, 8, 8, 8, 8, 16]  # 1/4, multiples of 8
    for _ in range(20):
        keep = space.step()
        widths = [len(k) for k in keep]
        assert space.predicted_ms(widths) <= space.budget_ms
        assert all(w % 8 == 0 or w == f for w, f in zip(widths, space.full))
        assert all(w >= f for w, f in zip(widths, space.floors))
        # balanced over the 2 groups of the grouped convs on either side
        for i in (1, 2, 3, 4):
            k = keep[i]
            half = space.full[i] // 2
            assert (k < half).sum() == (k >= half).sum()
        # the budget is used: one more step of any layer would not fit
        assert any(space.predicted_ms(
            [w + (8 if j == i else 0) for j, w in enumerate(widths)])
            > space.budget_ms for i in range(len(widths))
            if widths[i] < space.full[i])


def test_a_budget_below_the_narrowest_network_is_one_line():
    net = ODBBNet(ARCH)
    with pytest.raises(ValueError, match='latency budget .* is below the '
                       'narrowest network') as info:
        space_for(net, budget_ratio=0.01)
    assert '\n' not in str(info.value)
    with pytest.raises(ValueError, match='one of budget_ms and budget_ratio'):
        space_for(net)
    assert space_for(net, budget_ratio=1.0).widths_for(
        torch.rand(sum(ODBBNet(ARCH).widths))) == ODBBNet(ARCH).widths


def test_beta_learns_through_straight_through_gates_of_every_channel():
    torch.manual_seed(0)
    net = ODBBNet(ARCH, branches='repvgg')
    space = space_for(net, budget_ratio=0.5)
    keep = space.step()
    out = net(torch.randn(2, 3, 16, 16))[-1]
    (out.mean((2, 3)) @ torch.randn(out.shape[1], 10)).square().sum() \
        .backward()  # a linear head: pruned outputs still matter to it
    grad = space.beta.grad
    assert grad is not None
    for sl, kept, full in zip(space.slices, keep, space.full):
        pruned = torch.ones(full, dtype=torch.bool)
        pruned[kept] = False
        assert grad[sl][~pruned].abs().sum() > 0
        if pruned.any():  # pruned channels learn too
            assert grad[sl][pruned].abs().sum() > 0
    assert sum(len(k) for k in keep) < sum(space.full)


def test_fixed_widths_survive_a_state_dict_and_equal_the_narrow_network():
    torch.manual_seed(0)
    net = randomize_bn(ODBBNet(ARCH, branches='full', weight_sharing=False))
    space = space_for(net, budget_ratio=0.4, seed=3)
    with torch.no_grad():
        space.beta.normal_()
    for _ in range(3):
        space.step()
    keep = space.fix()
    state = space.state_dict()
    other = ODBBNet(ARCH, branches='full', weight_sharing=False)
    resumed = space_for(other, budget_ratio=0.9)
    resumed.load_state_dict(state)
    assert resumed.fixed and resumed.budget_ms == space.budget_ms
    assert [k.tolist() for k in resumed.keep] == [k.tolist() for k in keep]
    assert resumed.step() is resumed.keep  # fixed: no sampling
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = net(x)[-1]
        narrow = narrow_odbbnet(net, keep).eval()
        assert narrow.widths == space.widths
        assert rel_error(narrow(x)[-1], ref[:, keep[-1]]) <= FP32_TOL


@pytest.mark.parametrize('cost_aware', [True, False])
def test_each_layer_keeps_the_channels_ranked_above_the_threshold(
        cost_aware):
    """The threshold is on each channel's own score (a layer whose
    channels all score high keeps them all, wherever it sits), and with
    cost_aware the score is per unit of the channel's latency."""
    net = ODBBNet(ARCH)
    space = space_for(net, budget_ratio=0.6, cost_aware=cost_aware)
    last = space.slices[-1]
    scores = torch.full((sum(space.full), ), 0.3)
    scores[last] = 0.9  # the last layer's channels matter most
    widths = space.widths_for(scores)
    assert widths[-1] == space.full[-1]
    assert space.predicted_ms(widths) <= space.budget_ms
    # Reversed: the first layer matters most and keeps its width.
    scores = torch.full((sum(space.full), ), 0.3)
    scores[space.slices[0]] = 0.9
    widths = space.widths_for(scores)
    assert widths[0] == space.full[0]
    assert space.predicted_ms(widths) <= space.budget_ms
    if not cost_aware:  # ties broken by position: the last layer goes
        assert widths[-1] < space.full[-1]


def test_cost_aware_ranking_spends_the_budget_where_channels_are_cheap():
    net = ODBBNet(ARCH)
    space = space_for(net, budget_ratio=0.6)
    # One channel's multiply-adds per layer at 16 px, relative: the stride-1
    # layers at full resolution cost more per channel than the last
    # stride-2 layer (a quarter of the pixels).
    layer_cost = [float(space.cost[sl][0]) for sl in space.slices]
    assert layer_cost[1] > 2 * layer_cost[-1]
    assert float(space.cost.mean()) == pytest.approx(1.0, rel=0.05)
    equal = torch.full((sum(space.full), ), 0.5)
    aware = space.widths_for(equal)
    # Equal importance: the cheap last layer keeps its width, the costly
    # full-resolution layers give theirs up first.
    assert aware[-1] == space.full[-1] and aware[1] < space.full[1]
    blind = space_for(net, budget_ratio=0.6, cost_aware=False)
    kept = sum(aware)
    assert kept >= sum(blind.widths_for(equal))
