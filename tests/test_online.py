"""Online ODBB (OREPA form): composition == branches, exact fusion, search."""
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repnas_mm.models import ODBBNet
from repnas_mm.models.loading import CheckpointMismatch, load_pretrained
from repnas_mm.rep import ODBB, absorb, convert_to_odbb, grow
from repnas_mm.rep.branches import legal_branches
from repnas_mm.rep.online import INIT_SCALE, OnlineODBB
from repnas_mm.rep.surgery import bn_scale_ratio
from repnas_mm.search import SearchSpace

from .equivalence import FP32_TOL, assert_close_rel, randomize_bn, rel_error


def randomize_online(block: ODBB, seed: int = 0) -> ODBB:
    """Random BN statistics, branch scales and 1x1 residuals (as if trained)."""
    randomize_bn(block, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for branch in block.branches.values():
            branch.scale.copy_(torch.rand(branch.scale.shape, generator=gen)
                               * 2 - 0.5)
            if hasattr(branch, 'weight_1x1_residual'):
                r = branch.weight_1x1_residual
                r.copy_(torch.randn(r.shape, generator=gen) * 0.3)
    return block


def branches_on_feature_maps(block: ODBB, x: torch.Tensor) -> torch.Tensor:
    """The online block before its BN, each branch run as the operations it
    stands for (convs, zero padding, pooling), not through kernel algebra."""
    K, s, g = block.kernel_size, block.stride, block.groups
    out = 0
    for i, name in enumerate(block.branch_names):
        if name not in block.active:
            continue
        branch = block.branches[name]
        if name in ('1x1', 'kxk', '1xk', 'kx1'):
            kernel = branch._kernel(block.weight)
            kh, kw = kernel.shape[-2:]
            y = F.conv2d(x, kernel, None, s, (kh // 2, kw // 2), 1, g)
        elif name == '1x1_kxk':
            t = F.conv2d(x, branch.weight_1x1(), None, 1, 0, 1, g)
            y = F.conv2d(F.pad(t, (K // 2, ) * 4), branch._kernel(block.weight),
                         None, s, 0, 1, g)
        elif name == '1x1_avg':
            t = F.conv2d(x, branch._kernel(block.weight), None, 1, 0, 1, g)
            y = F.avg_pool2d(F.pad(t, (K // 2, ) * 4), K, s, 0)
        else:
            y = x
        y = y * branch.scale.reshape(1, -1, 1, 1)
        if block.gates is not None:
            y = y * block.gates[i]
        out = out + y
    return out


def pre_bn(block: ODBB, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, block.kernel(), None, block.stride,
                    block.kernel_size // 2, 1, block.groups)


@pytest.mark.parametrize('weight_sharing', [True, False])
@pytest.mark.parametrize('K', [3, 5])
@pytest.mark.parametrize('groups', [1, 2, 4])
@pytest.mark.parametrize('stride', [1, 2])
def test_every_subset_composes_its_branches_and_fuses_exactly(
        stride, groups, K, weight_sharing):
    """The one composed conv == the branches run on the feature map (small
    9x9 inputs: borders everywhere), and the online block in eval == its
    fused conv, for every legal subset; with search gates (not 1) too."""
    shapes = [(8, 12)]
    if stride == 1:
        shapes.append((8, 8))  # identity is legal
    worst, checked = 0.0, 0
    for cin, cout in shapes:
        subsets = [list(c) for r in range(1, 8) for c in
                   itertools.combinations(legal_branches(cin, cout, stride), r)]
        if cin == cout:
            subsets = [s for s in subsets if 'identity' in s]
        for i, subset in enumerate(subsets):
            torch.manual_seed(i)
            block = randomize_online(
                OnlineODBB(cin, cout, K, stride, groups, subset,
                     weight_sharing=weight_sharing), seed=i).eval()
            block.set_gates(torch.rand(len(block.branch_names)) + 0.5)
            x = torch.randn(2, cin, 9, 9)
            with torch.no_grad():
                composed = pre_bn(block, x)
                err = rel_error(composed, branches_on_feature_maps(block, x))
                assert err <= FP32_TOL, f'{subset}: composition {err:.3g}'
                ref = block(x)
                block.switch_to_deploy()
                err_fused = rel_error(block(x), ref)
            assert err_fused <= FP32_TOL, f'{subset}: fusion {err_fused:.3g}'
            worst = max(worst, err, err_fused)
            checked += 1
    assert checked == 2**6 - 1 + (2**6 if stride == 1 else 0)
    print(f'{checked} subsets, worst relative error {worst:.2e}')


def test_initialisation_follows_orepa():
    block = OnlineODBB(8, 8, branches='full', weight_sharing=False)
    for name, branch in block.branches.items():
        assert torch.equal(branch.scale, torch.full((8, ), INIT_SCALE[name]))
    assert INIT_SCALE['kxk'] == 0.25 and INIT_SCALE['1x1'] == 1.0
    first = block.branches['1x1_kxk'].weight_1x1()
    assert torch.equal(first, nn.init.dirac_(torch.empty(8, 8, 1, 1)))
    # No BN per branch: one for the block.
    bns = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns == [block.bn]


def _saved_feature_map_bytes(block, x):
    """Bytes autograd saves for backward in tensors of the feature-map size
    (kernel-sized tensors are excluded: they do not grow with the input)."""
    saved = {}

    def pack(t):
        if t.dim() == 4 and t.shape[-1] >= x.shape[-1] // block.stride:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = block(x)
    y.sum().backward()
    return sum(saved.values())


def test_online_full_block_saves_what_a_plain_block_saves():
    torch.manual_seed(0)
    x = torch.randn(4, 16, 32, 32, requires_grad=True)
    online = {p: OnlineODBB(16, 16, branches=p).train()
              for p in ('plain', 'full')}
    offline = ODBB(16, 16, branches='full').train()
    plain = _saved_feature_map_bytes(online['plain'], x)
    assert plain > 0
    assert _saved_feature_map_bytes(online['full'], x) == plain
    # Offline, every branch keeps its own maps for backward.
    assert _saved_feature_map_bytes(offline, x) > 4 * plain


def tiny_online_net(**kwargs):
    arch = dict(stem_channels=8, channels=(8, 16, 24, 32),
                num_blocks=(1, 2, 2, 1), strides=(2, 2, 1, 2))
    return ODBBNet(arch, branches='full', form='online', **kwargs)


def test_gates_reach_alpha_through_the_composition():
    torch.manual_seed(0)
    net = tiny_online_net(weight_sharing=False)
    space = SearchSpace(net, budget=15, seed=1)
    mask = space.step()
    x = torch.randn(2, 3, 32, 32)
    net(x)[-1].square().mean().backward()
    grad = space.alpha.grad
    assert grad[mask].abs().sum() > 0 and (grad[mask] != 0).float().mean() > 0.9
    assert torch.all(grad[~mask] == 0)
    for block, sl in zip(space.blocks, space.slices):
        for name, keep in zip(block.branch_names, mask[sl].tolist()):
            grads = [p.grad for p in block.branches[name].parameters()]
            assert all((g is not None) == keep for g in grads), name
    # Straight-through gates are exactly one in the forward pass.
    net.eval()
    with torch.no_grad():
        gated = net(x)[-1]
        space.apply(mask, None)
        assert torch.equal(net(x)[-1], gated)


def test_whole_online_network_fuses_and_loads_into_deploy(tmp_path):
    torch.manual_seed(0)
    net = tiny_online_net()
    space = SearchSpace(net, budget=20, seed=0)
    space.fix()
    randomize_online_net(net)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)[-1]
    path = tmp_path / 'online.pth'
    torch.save({'state_dict': net.state_dict()}, path)
    fused = ODBBNet(net.arch, branches='full', deploy=True).eval()
    load_pretrained(fused, str(path))
    with torch.no_grad():
        assert_close_rel(fused(x)[-1], ref)
    # A multi-branch offline twin cannot take it: one line says why.
    with pytest.raises(CheckpointMismatch, match="form='online'"):
        load_pretrained(ODBBNet(net.arch, branches='full'), str(path))
    online_twin = tiny_online_net()
    load_pretrained(online_twin, str(path))
    assert online_twin.blocks()[0].active == net.blocks()[0].active


def randomize_online_net(net):
    for i, block in enumerate(net.blocks()):
        randomize_online(block, seed=i)


@pytest.mark.parametrize('names', [['1x1'], ['1x1_kxk', '1x1_avg'],
                                   ['1x1', '1xk', 'kx1', 'identity']])
def test_growth_and_absorption_are_exact_online(names):
    torch.manual_seed(0)
    block = randomize_online(
        OnlineODBB(8, 8, 3, 1, 2, 'full', weight_sharing=False))
    block.active = ['kxk']
    off = torch.tensor([True, False] * 4)
    with torch.no_grad():
        block.branches['kxk'].scale[off] = 0.0  # a channel switched off
    block.eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        before = block(x)
        grow(block, names, bn_scale=0.01)
        for n in names:
            scale = block.branches[n].scale
            assert scale[off].eq(0).all() and scale[~off].eq(0.01).all()
            assert bn_scale_ratio(block, n) < 0.05
        assert_close_rel(block(x), before)
        randomize_online(block, seed=3)  # as if trained
        block.branches['kxk'].scale[off] = 0.0
        changed = block(x)
        absorb(block, names)
        assert block.active == ('kxk', )
        assert_close_rel(block(x), changed)
        for n in names:  # released branches start afresh
            assert block.branches[n].scale.eq(INIT_SCALE[n]).all()


def test_conversion_to_online_blocks_keeps_outputs_and_fuses_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False),
                          nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, 2, 1, bias=False),
                          nn.BatchNorm2d(8))
    randomize_bn(model).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    stock = {k: v.clone() for k, v in model.state_dict().items()}
    convert_to_odbb(model, x, branches='dbb', form='online')
    assert all(b.form == 'online' for b in model.modules() if isinstance(b, ODBB))
    with torch.no_grad():
        assert_close_rel(model(x), ref)
    from repnas_mm.rep import reparameterize_model
    fused = reparameterize_model(model)
    assert set(fused.state_dict()) == set(stock)
    with torch.no_grad():
        assert_close_rel(fused(x), ref)


@pytest.mark.parametrize('metric', ['synflow', 'snip'])
def test_dyrep_grows_and_deparameterizes_online_blocks_exactly(metric):
    from repnas_mm.search.dyrep import DyRep
    torch.manual_seed(0)
    net = tiny_online_net(weight_sharing=False)
    randomize_online_net(net)
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        full = net(x)[-1]
    policy = DyRep(net, grow_to='full', metric=metric, num_grow=2,
                   input_size=32)
    policy.start()  # every extra branch absorbed into the main kernel
    assert all(b.active == ('kxk', ) for b in net.blocks())
    with torch.no_grad():
        assert_close_rel(net(x)[-1], full)
    if metric == 'snip':
        net.train()
        net(x)[-1].square().mean().backward()
        net.eval()
    with torch.no_grad():
        before = net(x)[-1]
        grown = policy.step()['grown']
        assert len(grown) == 2 and all(len(names) >= 3 for _, names in grown)
        assert_close_rel(net(x)[-1], before)
        # Untrained new branches (scale 0.01) are weak: the next step
        # de-parameterizes them, function unchanged.
        policy.num_grow = 0
        removed = dict(policy.step()['removed'])
        assert set(removed) == {name for name, _ in grown}
        assert_close_rel(net(x)[-1], before)
    policy.close()


@pytest.mark.parametrize('groups', [1, 2])
def test_scaled_merge_gradients_are_autograds(groups):
    """The hand-written backward of the 1x1-KxK composition (it keeps no
    merged kernel) against finite differences, in float64."""
    from repnas_mm.rep.online import ScaledMerge
    gen = torch.Generator().manual_seed(groups)
    k1 = torch.randn(4, 4 // groups, 1, 1, dtype=torch.float64,
                     generator=gen, requires_grad=True)
    k2 = torch.randn(6, 4 // groups, 3, 3, dtype=torch.float64,
                     generator=gen, requires_grad=True)
    scale = torch.randn(6, 1, 1, 1, dtype=torch.float64, generator=gen,
                        requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: ScaledMerge.apply(a, b, c, groups), (k1, k2, scale))
