"""ODBB: exact fusion of every branch subset, masks, gates, sharing, deploy."""
import itertools

import pytest
import torch
import torch.nn as nn

from repnas_mm.rep import BRANCH_NAMES, ODBB, build_odbb, reparameterize_model
from repnas_mm.rep.branches import legal_branches

from .equivalence import FP32_TOL, assert_close_rel, randomize_bn, rel_error


def all_subsets(names):
    return [
        list(c) for r in range(1, len(names) + 1)
        for c in itertools.combinations(names, r)
    ]


def fused_vs_branches(block, x):
    """(multi-branch output, fused-conv output) of ``block`` in eval mode."""
    block.eval()
    with torch.no_grad():
        ref = block(x)
        block.switch_to_deploy()
        got = block(x)
    return ref, got


@pytest.mark.parametrize('quant_friendly', [False, True])
@pytest.mark.parametrize('weight_sharing', [True, False])
@pytest.mark.parametrize('K', [3, 5])
@pytest.mark.parametrize('groups', [1, 2, 4])
@pytest.mark.parametrize('stride', [1, 2])
def test_every_subset_fuses_exactly(stride, groups, K, weight_sharing,
                                    quant_friendly):
    """Every legal non-empty subset, in != out (and in == out for identity).

    Inputs are small (9x9 with K=5: most outputs touch the border), so the
    BN-of-zero padding of the 1x1-KxK and 1x1-avg branches is checked too.
    The quantization-friendly form (BN-free branches, post-BN) as well.
    """
    shapes = [(8, 12)]  # in != out: identity is illegal
    if stride == 1:
        shapes.append((8, 8))  # in == out, stride 1: identity is legal
    worst, checked = 0.0, 0
    for cin, cout in shapes:
        legal = legal_branches(cin, cout, stride)
        subsets = all_subsets(legal)
        if cin == cout:  # the in != out shape covered the rest
            subsets = [s for s in subsets if 'identity' in s]
        for i, subset in enumerate(subsets):
            torch.manual_seed(i)
            form = 'quant_friendly' if quant_friendly else 'standard'
            block = build_odbb(cin, cout, K, stride, groups, subset,
                               weight_sharing=weight_sharing, form=form)
            randomize_bn(block, seed=i)
            x = torch.randn(2, cin, 9, 9)
            ref, got = fused_vs_branches(block, x)
            err = rel_error(got, ref)
            assert err <= FP32_TOL, f'{subset}: relative error {err:.3g}'
            worst = max(worst, err)
            checked += 1
    expected = 2**6 - 1 + (2**6 if stride == 1 else 0)
    assert checked == expected
    print(f'{checked} subsets, worst relative error {worst:.2e}')


def test_fused_kernel_shape_is_the_plain_conv():
    block = ODBB(8, 16, 3, 2, 4, 'full')
    kernel, bias = block.kernel_bias()
    assert kernel.shape == (16, 2, 3, 3) and bias.shape == (16, )
    block.switch_to_deploy()
    plain = nn.Conv2d(8, 16, 3, 2, 1, groups=4, bias=True)
    assert {k: v.shape for k, v in block.fused_conv.state_dict().items()} \
        == {k: v.shape for k, v in plain.state_dict().items()}


def test_presets_are_filtered_and_lists_are_strict():
    assert ODBB(8, 8, branches='full').branch_names == BRANCH_NAMES
    assert 'identity' not in ODBB(8, 8, stride=2, branches='full').branch_names
    assert ODBB(8, 16, branches='repvgg').branch_names == ('1x1', 'kxk')
    with pytest.raises(ValueError, match="'identity'"):
        ODBB(8, 8, stride=2, branches=['kxk', 'identity'])
    with pytest.raises(ValueError, match="'3x3'"):
        ODBB(8, 8, branches=['kxk', '3x3'])
    with pytest.raises(ValueError, match='at least one'):
        ODBB(8, 8, branches=[])
    with pytest.raises(ValueError, match='preset'):
        ODBB(8, 8, branches='everything')
    with pytest.raises(ValueError, match='odd'):
        ODBB(8, 8, kernel_size=4)
    with pytest.raises(ValueError, match='groups'):
        ODBB(8, 6, groups=4)


def test_inactive_branches_run_neither_forward_nor_backward():
    torch.manual_seed(0)
    block = ODBB(4, 4, branches='full', weight_sharing=False)
    calls = {name: 0 for name in block.branch_names}
    for name, branch in block.branches.items():
        branch.register_forward_hook(
            lambda m, i, o, name=name: calls.__setitem__(
                name, calls[name] + 1))
    block.active = ['kxk', 'identity']
    block(torch.randn(2, 4, 5, 5)).sum().backward()
    assert calls == {n: int(n in ('kxk', 'identity')) for n in calls}
    for name, branch in block.branches.items():
        grads = [p.grad for p in branch.parameters()]
        if name in ('kxk', 'identity'):
            assert all(g is not None for g in grads)
        else:
            assert all(g is None for g in grads), name
    with pytest.raises(ValueError, match='at least one'):
        block.active = []
    with pytest.raises(ValueError, match="'identity' is not in"):
        ODBB(4, 8, branches='full').active = ['identity']


def test_active_subset_fuses_to_the_active_branches_only():
    torch.manual_seed(0)
    block = randomize_bn(ODBB(6, 6, branches='full'))
    block.active = ['1x1_avg', 'kx1', 'identity']
    ref, got = fused_vs_branches(block, torch.randn(2, 6, 7, 7))
    assert_close_rel(got, ref)
    assert block.branch_names == ('1x1_avg', 'kx1', 'identity')


def test_gates_scale_branches_in_forward_and_fuse():
    torch.manual_seed(0)
    block = randomize_bn(ODBB(4, 4, branches='repvgg')).eval()
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        outs = [block.branches[n](x, block.weight) for n in block.branch_names]
    gates = torch.tensor([0.5, 2.0, -1.0], requires_grad=True)
    block.set_gates(gates)
    y = block(x)
    assert_close_rel(y.detach(), sum(g * o for g, o in zip(gates.detach(),
                                                           outs)))
    # fuse() is differentiable in the gates and the shared kernel.
    kernel, bias = block.kernel_bias()
    (kernel.sum() + bias.sum()).backward()
    assert gates.grad is not None and gates.grad.abs().sum() > 0
    assert block.weight.grad is not None
    ref, got = fused_vs_branches(block, x)
    assert_close_rel(got, ref)
    with pytest.raises(ValueError, match='shape'):
        ODBB(4, 4, branches='repvgg').set_gates(torch.ones(2))


def test_weight_sharing_crops_the_main_kernel():
    shared = ODBB(4, 6, 5, branches='full', weight_sharing=True)
    own = ODBB(4, 6, 5, branches='full', weight_sharing=False)
    n_shared = sum(p.numel() for p in shared.parameters())
    n_own = sum(p.numel() for p in own.parameters())
    # Own kernels: 1x1, kxk, kxk of 1x1_kxk, 1x1 of 1x1_avg, 1xk, kx1.
    assert n_own - n_shared == 6 * 4 * (1 + 25 + 25 + 1 + 5 + 5) - 6 * 4 * 25
    assert not hasattr(shared.branches['1x1'], 'weight')
    # Editing the main kernel's middle row changes the 1xk branch, and
    # only the middle row does.
    shared.eval()
    x = torch.randn(1, 4, 7, 7)
    branch = shared.branches['1xk']
    before = branch(x, shared.weight)
    with torch.no_grad():
        shared.weight[:, :, 0, :] += 1.0  # top row: not the 1xk crop
    assert torch.equal(branch(x, shared.weight), before)
    with torch.no_grad():
        shared.weight[:, :, 2, :] += 1.0  # middle row
    assert not torch.allclose(branch(x, shared.weight), before)


def test_switch_to_deploy_is_idempotent_and_loads_strictly():
    torch.manual_seed(0)
    block = randomize_bn(ODBB(8, 8, branches='full')).eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        ref = block(x)
        block.switch_to_deploy()
        once = block(x)
        state = {k: v.clone() for k, v in block.state_dict().items()}
        block.switch_to_deploy()
        twice = block(x)
    assert torch.equal(once, twice)
    assert all(torch.equal(v, block.state_dict()[k]) for k, v in state.items())
    assert_close_rel(once, ref)
    fresh = ODBB(8, 8, branches='full', deploy=True).eval()
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x), once)


def test_training_mode_forward_and_backward_run():
    torch.manual_seed(0)
    block = ODBB(4, 8, 3, 2, 2, branches='full').train()
    y = block(torch.randn(4, 4, 8, 8))
    assert y.shape == (4, 8, 4, 4)
    y.square().mean().backward()
    assert block.weight.grad.abs().sum() > 0


def test_reparameterize_model_walks_any_tree():
    torch.manual_seed(0)
    model = nn.Sequential(
        ODBB(3, 8, branches='dbb'), nn.ReLU(),
        nn.Sequential(ODBB(8, 8, branches='full'), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    randomize_bn(model).eval()
    x = torch.randn(2, 3, 10, 10)
    fused = reparameterize_model(model)
    assert all(m.fused_conv is None for m in model.modules()
               if isinstance(m, ODBB))  # inplace=False keeps the original
    assert all(m.fused_conv is not None for m in fused.modules()
               if isinstance(m, ODBB))
    with torch.no_grad():
        assert_close_rel(fused(x), model(x))
    again = reparameterize_model(fused, inplace=True)
    assert again is fused


def test_training_mode_border_is_bn_of_a_zero_padded_input():
    """In training, 1x1-KxK pads with BN(0) under the batch statistics."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    block = randomize_bn(ODBB(4, 6, branches=['1x1_kxk'])).train()
    branch = block.branches['1x1_kxk']
    x = torch.randn(3, 4, 5, 5)
    u = F.conv2d(x, branch.weight_1x1)
    var, mean = torch.var_mean(u, dim=(0, 2, 3), unbiased=False)
    bn = branch.bn_1x1
    t = (F.pad(u, (1, 1, 1, 1)) - mean.reshape(1, -1, 1, 1)) / torch.sqrt(
        var.reshape(1, -1, 1, 1) + bn.eps) * bn.weight.reshape(
            1, -1, 1, 1) + bn.bias.reshape(1, -1, 1, 1)
    ref = F.batch_norm(
        F.conv2d(t, block.weight), None, None, branch.bn.weight,
        branch.bn.bias, training=True, eps=branch.bn.eps)
    assert_close_rel(block(x), ref)


class _OtherBN(nn.BatchNorm2d):
    """A BN subclass: takes the functional_call path (like SyncBatchNorm)."""


@pytest.mark.parametrize('bn_type', [nn.BatchNorm2d, _OtherBN])
@pytest.mark.parametrize('momentum', [0.1, None])
@pytest.mark.parametrize('training', [True, False])
def test_gate_folded_into_bn_equals_bn_times_gate(bn_type, momentum,
                                                   training):
    from repnas_mm.rep.branches import batch_norm
    torch.manual_seed(0)
    ref_bn = randomize_bn(bn_type(6, momentum=momentum)).train(training)
    bn = randomize_bn(bn_type(6, momentum=momentum)).train(training)
    x = torch.randn(4, 6, 5, 5)
    g_ref = torch.tensor(1.0, requires_grad=True)
    g = torch.tensor(1.0, requires_grad=True)
    ref = ref_bn(x) * g_ref
    got = batch_norm(bn, x, g)
    assert torch.allclose(got, ref, atol=1e-6)
    w = torch.randn_like(ref)
    (ref * w).sum().backward()
    (got * w).sum().backward()
    assert torch.allclose(g.grad, g_ref.grad, rtol=1e-5)
    assert torch.allclose(bn.weight.grad, ref_bn.weight.grad, rtol=1e-5)
    assert torch.allclose(bn.bias.grad, ref_bn.bias.grad, rtol=1e-5)
    assert torch.allclose(bn.running_mean, ref_bn.running_mean)
    assert torch.allclose(bn.running_var, ref_bn.running_var)
    assert bn.num_batches_tracked == ref_bn.num_batches_tracked


def test_output_tensors_walks_nested_outputs_in_a_fixed_order():
    from repnas_mm.rep.outputs import output_tensors
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1, ), 2.0)
    out = (a, {'z': c, 'y': [b]})
    assert [t.item() for t in output_tensors(out)] == [0.0, 1.0, 2.0]
    with pytest.raises(TypeError, match='str'):
        output_tensors((a, 'text'))
    assert output_tensors((a, 'text', None), strict=False) == [a]
