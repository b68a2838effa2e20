"""DyRep: ODBBs in stock backbones, exact growth/absorption, the hook."""
import copy
import json

import pytest
import torch
import torch.nn as nn

import repnas_mm  # noqa: F401
from repnas_mm.rep import ODBB, reparameterize_model
from repnas_mm.rep.convert import convert_to_odbb
from repnas_mm.rep.surgery import absorb, grow
from repnas_mm.search.dyrep import DyRep

from .conftest import REPO, cls_data_options, read_scalars, run_tool
from .equivalence import assert_close_rel, randomize_bn

DYREP_CFG = REPO / 'configs' / 'dyrep_resnet18_cifar10.py'


def stock_backbones():
    from mmdet.models.backbones import ResNet as DetResNet
    from mmpretrain.models import MobileNetV2, ResNet
    return {
        'mmpretrain ResNet-18': (lambda: ResNet(18), 17),
        'mmpretrain ResNet-50': (lambda: ResNet(50), 17),
        'mmpretrain MobileNetV2': (lambda: MobileNetV2(), 18),
        'mmdet ResNet-18 (CenterNet)': (lambda: DetResNet(18), 17),
    }


def _eval(model):
    model.eval()  # (mmpretrain backbones' train() returns None)
    return model


@pytest.mark.parametrize('name', list(stock_backbones()))
def test_conversion_is_exact_and_fuses_back_to_the_stock_backbone(name):
    build, expected = stock_backbones()[name]
    torch.manual_seed(0)
    stock = _eval(randomize_bn(build()))
    model = copy.deepcopy(stock)
    converted = convert_to_odbb(model)
    assert len(converted) == expected
    assert all(isinstance(model.get_submodule(n), ODBB) for n in converted)
    x = torch.randn(2, 3, 64, 64)
    _eval(model)
    with torch.no_grad():
        assert_close_rel(model(x)[-1], stock(x)[-1])
    # Grow some blocks (function unchanged), fuse: the stock layout again.
    blocks = [m for m in model.modules() if isinstance(m, ODBB)]
    for block in blocks[::3]:
        grow(block, ['1x1', '1x1_kxk', '1x1_avg'])
        randomize_bn(block.branches['1x1_kxk'], seed=1)
    with torch.no_grad():
        grown = model(x)[-1]
    fused = reparameterize_model(model)
    fresh = _eval(build())
    fresh.load_state_dict(fused.state_dict(), strict=True)
    with torch.no_grad():
        assert_close_rel(fresh(x)[-1], grown)


@pytest.mark.parametrize('names', [['1x1'], ['1x1_kxk', '1x1_avg'],
                                   ['1x1', '1xk', 'kx1', '1x1_avg']])
def test_growth_and_absorption_leave_the_block_unchanged(names):
    torch.manual_seed(0)
    block = randomize_bn(ODBB(8, 8, 3, 1, 2, 'full', weight_sharing=False))
    block.active = ['kxk']
    block.eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        before = block(x)
        grow(block, names, bn_scale=0.01)
        assert set(block.active) == {'kxk', *names}
        assert all(block.branches[n].bn.weight.eq(0.01).all() for n in names)
        assert_close_rel(block(x), before)
        # Train a little elsewhere: then absorb the branches back.
        for n in names:
            randomize_bn(block.branches[n], seed=3)
        changed = block(x)
        absorb(block, names)
        assert block.active == ('kxk', )
        assert_close_rel(block(x), changed)


def test_growth_and_absorption_where_the_main_bn_weight_is_zero():
    """Zero-initialised residual BNs (timm, torchvision, mmdet): exact too."""
    torch.manual_seed(0)
    block = randomize_bn(ODBB(6, 6, 3, branches='full', weight_sharing=False))
    block.active = ['kxk']
    block.eval()
    off = torch.tensor([True, False, True, False, False, True])
    with torch.no_grad():
        block.branches['kxk'].bn.weight[off] = 0.0
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        before = block(x)
        grow(block, ['1x1', '1x1_kxk'], bn_scale=0.1)
        # The new branches join at zero where the main branch is off.
        for name in ('1x1', '1x1_kxk'):
            weight = block.branches[name].bn.weight
            assert weight[off].eq(0).all() and weight[~off].eq(0.1).all()
        assert_close_rel(block(x), before)
        # As after training: the new branches live on every channel, and
        # the main one is still off on some; absorbing switches it on.
        for name in ('1x1', '1x1_kxk'):
            randomize_bn(block.branches[name], seed=5)
        changed = block(x)
        absorb(block, ['1x1', '1x1_kxk'])
        assert block.branches['kxk'].bn.weight[off].eq(1).all()
        assert_close_rel(block(x), changed)
        assert torch.isfinite(block.branches['kxk'].weight).all()


def test_growth_needs_own_kernels():
    block = ODBB(4, 4, branches='full', weight_sharing=True)
    block.active = ['kxk']
    with pytest.raises(ValueError, match='weight_sharing=False'):
        grow(block, ['1x1'])
    with pytest.raises(ValueError, match='DyRep needs weight_sharing'):
        DyRep(nn.Sequential(block))


def _converted_resnet():
    from mmpretrain.models import ResNet_CIFAR
    torch.manual_seed(0)
    model = ResNet_CIFAR(18)
    convert_to_odbb(model, torch.zeros(1, 3, 32, 32))
    return model


@pytest.mark.parametrize('metric', ['synflow', 'snip', 'grad_norm'])
def test_policy_grows_the_most_salient_block(metric):
    model = _converted_resnet()
    policy = DyRep(model, metric=metric, num_grow=2, input_size=32)
    policy.start()
    assert policy.num_branches() == 17
    if metric != 'synflow':  # gradient metrics accumulate over iterations
        model.train()
        model(torch.randn(4, 3, 32, 32))[-1].square().mean().backward()
    scores = policy.saliency() if metric == 'synflow' else \
        policy._accumulated.clone()
    events = policy.step()
    assert len(events['grown']) == 2
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    top = [policy.block_names[i] for i in order[:2]]
    assert [n for n, _ in events['grown']] == top
    assert policy.num_branches() == 17 + 2 * 3
    policy.close()


def test_policy_deparameterizes_weak_branches_and_releases_them():
    model = _converted_resnet()
    policy = DyRep(model, num_grow=1, deparam_ratio=0.05, input_size=32)
    policy.start()
    grown = policy.step()['grown'][0][0]
    block = model.get_submodule(grown)
    with torch.no_grad():  # one branch became strong, one stayed weak
        block.branches['1x1'].bn.weight.fill_(0.5)
        block.branches['1x1_avg'].bn.weight.fill_(0.001)
    randomize_bn(block.branches['1x1_kxk'], seed=2)
    with torch.no_grad():
        block.branches['1x1_kxk'].bn.weight.fill_(0.5)
    _eval(model)
    x = torch.randn(2, 3, 32, 32)
    policy.num_grow = 0  # this step: de-parameterization only
    with torch.no_grad():
        before = model(x)[-1]
        events = policy.step()
        after = model(x)[-1]
    assert (grown, ['1x1_avg']) in events['removed']
    assert set(block.active) == {'kxk', '1x1', '1x1_kxk'}
    assert_close_rel(after, before)
    released = {id(p) for p in events['released']}
    assert released == {id(p) for p in block.branches['1x1_avg'].parameters()}
    assert block.branches['1x1_avg'].bn.weight.eq(1).all()  # re-initialized
    # The next step does not grow a block it de-parameterizes.
    policy.num_grow = len(policy.blocks)
    policy.deparam_ratio = 2.0  # everything new is "weak" now
    events = policy.step()
    assert events['removed'] and not {n for n, _ in events['removed']} & {
        n for n, _ in events['grown']}
    structure = policy.structure()
    other = DyRep(_converted_resnet(), input_size=32)
    other.load_structure(structure)
    assert other.structure() == structure


def test_odbbnet_starts_from_its_main_branch():
    from repnas_mm.models import ODBBNet
    torch.manual_seed(0)
    net = randomize_bn(ODBBNet('A0', branches='full', weight_sharing=False))
    policy = DyRep(net, grow_to='full', input_size=32)
    policy.start()
    assert all(b.active == ('kxk', ) for b in net.blocks())
    events = policy.step()
    assert len(events['grown']) == 1
    assert policy.num_branches() > len(net.blocks())


@pytest.mark.parametrize('joint', [False, True])
def test_hook_drops_optimizer_state_of_removed_parameters(joint):
    """With a plain optimizer, and with RepNAS's JointOptimizer (whose
    ``state`` is a view over its parts: a pop reaches the owning part)."""
    from repnas_mm.search.dyrep_hook import DyRepHook
    from repnas_mm.search.optim import JointOptimizer
    model = _converted_resnet()
    # A tiny lr: momentum state exists, BN scales stay where growth put them.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-9, momentum=0.9)
    if joint:
        alpha = nn.Parameter(torch.zeros(3))
        optimizer = JointOptimizer(
            dict(weights=optimizer, alpha=torch.optim.Adam([alpha])))

    class Runner:
        epoch, max_epochs = 0, 10
        optim_wrapper = type('W', (), {'optimizer': optimizer})()

    runner = Runner()
    runner.model = model
    hook = DyRepHook(interval=1, num_grow=1, deparam_ratio=0.5,
                     input_size=32)
    hook.before_run(runner)
    hook.after_train_epoch(runner)  # grows one block
    grown = hook.history[-1]['grown'][0]
    block = model.get_submodule(grown)
    model.train()
    model(torch.randn(2, 3, 32, 32))[-1].sum().backward()
    optimizer.step()
    params = list(block.branches['1x1'].parameters())
    assert all(p in optimizer.state for p in params)
    runner.epoch = 1
    hook.after_train_epoch(runner)  # 0.01 < 0.5: de-parameterized
    assert grown in [n for n, _ in hook.history[-1]['removed']]
    assert not any(p in optimizer.state for p in params)
    assert all(p.grad is None for p in params)
    if joint:
        part = optimizer.optimizers['weights'].state
        assert not any(p in part for p in params)
        assert len(optimizer.state) == len(part)


def test_hook_removes_its_gradient_hooks_after_the_run():
    from repnas_mm.search.dyrep_hook import DyRepHook
    model = _converted_resnet()

    class Runner:
        epoch, max_epochs = 0, 10

    runner = Runner()
    runner.model = model
    hook = DyRepHook(metric='snip', input_size=32)
    hook.before_run(runner)
    weight = hook.policy.blocks[0].branches['kxk'].weight
    assert len(hook.policy._hooks) == 17 and weight._backward_hooks
    hook.after_run(runner)
    assert hook.policy._hooks == [] and not weight._backward_hooks


@pytest.mark.slow
def test_short_run_grows_prunes_resumes_and_ends_fused(tmp_path,
                                                       cifar10_tiny):
    """tools/train.py: grow at epoch 1, stop, resume, prune and grow at
    epoch 3, end fused."""
    cfg = tmp_path / 'dyrep.py'
    cfg.write_text(
        f"_base_ = '{DYREP_CFG}'\n"
        "train_dataloader = dict(batch_size=8, num_workers=0, dataset=dict(\n"
        "    indices=list(range(0, 160, 10))))\n"
        "val_dataloader = dict(num_workers=0, dataset=dict(\n"
        "    indices=list(range(0, 60, 6))))\n"
        "custom_hooks = [dict(type='DyRepHook', interval=1, num_grow=2,\n"
        "                     deparam_ratio=0.5, input_size=32)]\n"
        "train_cfg = dict(max_epochs=4)\n"
        "param_scheduler = dict(T_max=4)\n")
    work = tmp_path / 'work'
    options = ['--cfg-options', *cls_data_options(cifar10_tiny)]
    run_tool('tools/train.py', cfg, '--work-dir', work, *options,
             'train_cfg.max_epochs=2')
    proc = run_tool('tools/train.py', cfg, '--work-dir', work, '--resume',
                    *options)
    log = proc.stdout + proc.stderr
    # 17 convs; 2 grown to 4 branches each at every step (then pruned).
    assert 'DyRep: structure restored (23 branches)' in log
    history = json.loads((work / 'dyrep_history.json').read_text())
    assert [h['epoch'] for h in history] == [0, 1, 3]
    assert history[0]['branches'] == 17
    assert history[1]['branches'] == 17 + 6 and len(history[1]['grown']) == 2
    # After the resume: weak new branches pruned (those of a block whose main
    # BN starts at 0, ResNet's zero_init_residual, are not weak relative to
    # it), two blocks grown.
    removed = {n for n, _ in history[2]['removed']}
    assert removed and removed <= set(history[1]['grown'])
    assert len(history[2]['grown']) == 2
    assert any('accuracy/top1' in s for s in read_scalars(work))
    # tools/deploy.py fuses it (its structure from the checkpoint) into the
    # stock CIFAR ResNet-18, verified on real images.
    from mmengine.config import Config
    from mmpretrain.models import ResNet_CIFAR
    from repnas_mm.deploy import VerifyOptions, deploy
    result = deploy(str(cfg), str(work / 'epoch_4.pth'), str(tmp_path / 'd'),
                    VerifyOptions([str(cifar10_tiny / 'val' / 'dog')], 2))
    assert result['fused_error'] <= 1e-4
    deployed = Config.fromfile(result['config'])
    assert deployed.model.backbone.type == 'ResNet_CIFAR'
    state = torch.load(result['checkpoint'], weights_only=True)['state_dict']
    stock = _eval(ResNet_CIFAR(18))
    stock.load_state_dict(
        {k[len('backbone.'):]: v for k, v in state.items()
         if k.startswith('backbone.')}, strict=True)


@pytest.mark.slow
def test_ddp_ranks_grow_identical_structures(tmp_path, cifar10_tiny):
    """2 CPU processes, snip saliency (local gradients, all-reduced)."""
    from .conftest import run_dist_train
    probe = tmp_path / 'structure'
    cfg = tmp_path / 'dyrep_ddp.py'
    cfg.write_text(
        f"_base_ = '{DYREP_CFG}'\n"
        "custom_imports = dict(imports=['repnas_mm', 'tests.probes'])\n"
        "train_dataloader = dict(batch_size=4, num_workers=0, dataset=dict(\n"
        "    indices=list(range(0, 160, 10))))\n"
        "val_dataloader = dict(num_workers=0, dataset=dict(\n"
        "    indices=list(range(0, 60, 6))))\n"
        "custom_hooks = [dict(type='DyRepHook', interval=1, num_grow=2,\n"
        "                     metric='snip', deparam_ratio=0.5,\n"
        "                     input_size=32),\n"
        f"                dict(type='DyRepProbeHook', out='{probe}')]\n"
        "train_cfg = dict(max_epochs=3)\n"
        "param_scheduler = dict(T_max=3)\n")
    run_dist_train(cfg, 2, '--work-dir', tmp_path / 'work',
                   '--cfg-options', *cls_data_options(cifar10_tiny))
    ranks = [[json.loads(line) for line in open(f'{probe}.rank{r}.jsonl')]
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    for a, b in zip(*ranks):
        assert a == b
    grown = [sum(len(v) for v in r['structure'].values()) for r in ranks[0]]
    assert grown[0] == 17 + 6  # two blocks grew after epoch 1


def test_saliency_does_not_hide_a_models_own_type_error():
    """A model that takes ``mode`` is called with ``mode='tensor'``; a
    TypeError raised inside it is a bug to see, not a cue to retry."""
    from repnas_mm.search.dyrep import _forward_sum

    class TensorModeBroken(nn.Module):

        def __init__(self):
            super().__init__()
            self.net = _converted_resnet()

        def forward(self, x, mode='loss'):
            if mode == 'tensor':
                raise TypeError('a bug in tensor mode')
            return self.net(x)

    model = TensorModeBroken()
    with pytest.raises(TypeError, match='a bug in tensor mode'):
        _forward_sum(model, torch.ones(1, 3, 32, 32))
    # A plain module (no mode) is called with the input alone.
    total = _forward_sum(model.net, torch.ones(1, 3, 32, 32))
    assert torch.isfinite(total)
