"""The RepNAS search: ranking, gates, masks, alpha's optimizer, hook, DDP, resume."""
import json
import math

import pytest
import torch
import torch.nn as nn

import repnas_mm  # noqa: F401  (registers the hook and the constructor)
from repnas_mm.models import ODBBNet
from repnas_mm.rep.presets import BudgetError
from repnas_mm.search import SearchSpace, resolve_budget
from repnas_mm.search.optim import JointOptimizer

from .conftest import REPO, run_dist_train, run_tool
from .conftest import cls_data_options

SEARCH_CFG = REPO / 'tests' / 'configs' / 'odbb_cls_cifar10_tiny.py'


def tiny_net(branches='full'):
    """ODBBNet with 7 blocks (44 legal branches) for quick CPU tests."""
    arch = dict(
        stem_channels=8,
        channels=(8, 16, 24, 32),
        num_blocks=(1, 2, 2, 1),
        strides=(2, 2, 1, 2))
    return ODBBNet(arch, branches=branches)


class Classifier(nn.Module):

    def __init__(self):
        super().__init__()
        self.backbone = tiny_net()
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.backbone(x)[-1].mean((2, 3)))


def test_budget_counts_and_ratios():
    assert resolve_budget(30, 44, 7) == 30
    assert resolve_budget(0.5, 44, 7) == 22
    for bad in (6, 45, 0.1):
        with pytest.raises(ValueError, match=r'\[7, 44\]'):
            resolve_budget(bad, 44, 7)
    with pytest.raises(BudgetError, match='an int'):
        resolve_budget('66', 44, 7)


@pytest.mark.parametrize('budget', [7, 8, 20, 43, 44])
def test_exactly_budget_branches_and_no_empty_block(budget):
    torch.manual_seed(0)
    net = tiny_net()
    space = SearchSpace(net, budget=budget, seed=budget)
    assert space.num_branches == 44 and len(space.blocks) == 7
    with torch.no_grad():
        space.alpha.normal_(0, 3)  # alphas that would empty some blocks
    for _ in range(50):
        mask = space.step()
        assert int(mask.sum()) == budget
        for block, sl in zip(space.blocks, space.slices):
            assert mask[sl].any()
            kept = [n for n, k in zip(block.branch_names, mask[sl]) if k]
            assert list(block.active) == kept


def test_pruned_branches_do_not_run_and_get_no_gradient():
    torch.manual_seed(0)
    net = tiny_net()
    # Own weights per branch, so "no gradient" is visible per branch.
    net = ODBBNet(net.arch, branches='full', weight_sharing=False)
    space = SearchSpace(net, budget=15, seed=1)
    calls = {}
    for i, block in enumerate(space.blocks):
        for name, branch in block.branches.items():
            branch.register_forward_hook(
                lambda m, inp, out, key=(i, name): calls.__setitem__(
                    key, calls.get(key, 0) + 1))
    mask = space.step()
    net(torch.randn(2, 3, 32, 32))[-1].square().mean().backward()
    for i, (block, sl) in enumerate(zip(space.blocks, space.slices)):
        for name, keep in zip(block.branch_names, mask[sl].tolist()):
            grads = [p.grad for p in block.branches[name].parameters()]
            if keep:
                assert calls.get((i, name)) == 1
                assert all(g is not None for g in grads)
            else:
                assert (i, name) not in calls
                assert all(g is None for g in grads), (i, name)
    # Eq. 12: alpha gets a gradient through the kept branches' gates only.
    grad = space.alpha.grad
    assert grad[mask].abs().sum() > 0
    assert torch.all(grad[~mask] == 0)


def test_gates_are_exactly_one_in_the_forward_pass():
    torch.manual_seed(0)
    net = tiny_net().eval()
    space = SearchSpace(net, budget=20, seed=0)
    with torch.no_grad():
        space.alpha.normal_()
    mask = space.step()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        gated = net(x)[-1]
        space.apply(mask, None)  # same branches, no gates
        plain = net(x)[-1]
    assert torch.equal(gated, plain)


def test_warmup_and_fix():
    torch.manual_seed(0)
    net = tiny_net()
    space = SearchSpace(net, budget=20, seed=0)
    # Warm-up: alpha frozen, masks still sampled, no gates.
    space.alpha.requires_grad_(False)
    masks = [space.step().clone() for _ in range(5)]
    assert any(not torch.equal(masks[0], m) for m in masks[1:])
    assert all(b.gates is None for b in space.blocks)
    space.alpha.requires_grad_(True)
    with torch.no_grad():
        space.alpha.copy_(torch.linspace(-1, 1, 44))
    fixed = space.fix()
    assert int(fixed.sum()) == 20 and not space.alpha.requires_grad
    assert torch.equal(fixed, space.top_k(space.alpha))
    for _ in range(5):
        assert torch.equal(space.step(), fixed)
    assert all(b.gates is None for b in space.blocks)


def test_noise_off_ranks_alpha_itself():
    torch.manual_seed(0)
    space = SearchSpace(tiny_net(), budget=20, seed=0, noise=False)
    with torch.no_grad():
        space.alpha.copy_(torch.randn(44))
    masks = [space.step().clone() for _ in range(3)]
    assert all(torch.equal(m, space.top_k(space.alpha)) for m in masks)
    # With noise (the default) the same alpha gives other masks.
    space.configure(20, noise=True)
    assert any(not torch.equal(space.step(), masks[0]) for _ in range(5))


def test_soft_gates_scale_kept_branches_by_their_score():
    torch.manual_seed(0)
    space = SearchSpace(tiny_net(), budget=20, seed=3, gate='soft')
    generator = space.generator.get_state()
    mask = space.step()
    space.generator.set_state(generator)
    s = space.scores(noise=True)
    gates = torch.cat([b.gates for b in space.blocks])
    assert torch.allclose(gates, mask.float() * s)
    assert bool(((gates > 0) & (gates < 1)).sum() == 20)
    gates.sum().backward()  # alpha gets a gradient through them
    assert space.alpha.grad.abs().sum() > 0
    # Warm-up: still scaled, no gradient to carry.
    space.alpha.requires_grad_(False)
    space.step()
    assert all(not b.gates.requires_grad for b in space.blocks)
    with pytest.raises(ValueError, match='gate must be one of'):
        space.configure(20, gate='hard')


def test_hook_at_fix_options_are_checked():
    from types import SimpleNamespace
    from repnas_mm.search.repnas_hook import RepNASHook
    with pytest.raises(ValueError, match='at_fix must be one of'):
        RepNASHook(budget=22, fix_epoch=2, at_fix='restart')
    with pytest.raises(ValueError, match='needs a fix_epoch'):
        RepNASHook(budget=22, at_fix='retrain')
    hook = RepNASHook(budget=22, fix_epoch=2, at_fix='retrain')

    def runner(*schedulers):
        return SimpleNamespace(train_dataloader=[None] * 10,
                               param_schedulers=list(schedulers))

    def scheduler(begin, end, by_epoch=True):
        return SimpleNamespace(begin=begin, end=end, by_epoch=by_epoch)

    # Schedulers that end at or begin from fix_epoch (iterations: 20).
    hook._check_schedulers(runner(scheduler(0, 2), scheduler(2, 6),
                                  scheduler(20, 60, by_epoch=False)))
    with pytest.raises(ValueError, match='runs across fix_epoch 2'):
        hook._check_schedulers(runner(scheduler(0, 6)))
    with pytest.raises(ValueError, match='runs across fix_epoch 2'):
        hook._check_schedulers(runner(scheduler(0, 60, by_epoch=False)))


def test_architecture_file_rebuilds_the_searched_network(tmp_path):
    torch.manual_seed(0)
    net = tiny_net()
    space = SearchSpace(net, budget=18, seed=0)
    with torch.no_grad():
        space.alpha.normal_()
    arch = space.architecture('tiny')
    from repnas_mm.rep.arch import save_arch
    path = tmp_path / 'searched_arch.json'
    save_arch(arch, path)
    data = json.loads(path.read_text())
    assert data['budget'] == 18 and data['num_branches'] == 18
    assert len(data['blocks']) == 7 and 'alpha' in data['blocks'][0]
    fresh = ODBBNet(net.arch, branches=str(path))
    assert [b.branch_names for b in fresh.blocks()] == arch.blocks
    # ... and a space can apply (and fix) it on the supernet.
    other = SearchSpace(tiny_net(), budget=44)
    other.load_architecture(path)
    assert other.fixed and torch.equal(other.mask, space.top_k(space.alpha))


def test_noise_state_round_trips():
    net = tiny_net()
    space = SearchSpace(net, budget=20, seed=3)
    space.step()
    state = {k: v for k, v in space.state_dict().items()}
    expected = [space.step().clone() for _ in range(4)]
    again = SearchSpace(tiny_net(), budget=20, seed=99)
    again.load_state_dict(state)
    assert all(torch.equal(again.step(), m) for m in expected)
    with pytest.raises(ValueError, match='another network'):
        SearchSpace(ODBBNet('A0')).load_state_dict(state)


def build_wrapper(model, **cfg):
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
    wrapper_cfg = dict(
        type='OptimWrapper',
        constructor='RepNASOptimWrapperConstructor',
        optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4))
    wrapper_cfg.update(cfg)
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(type=wrapper_cfg.pop('constructor'),
             optim_wrapper_cfg=wrapper_cfg))
    return constructor(model)


def test_alpha_has_its_own_adam():
    torch.manual_seed(0)
    model = Classifier()
    wrapper = build_wrapper(model)
    joint = wrapper.optimizer
    assert isinstance(joint, JointOptimizer)
    adam, sgd = joint.optimizers['alpha'], joint.optimizers['weights']
    assert isinstance(adam, torch.optim.Adam)
    assert isinstance(sgd, torch.optim.SGD)
    group = adam.param_groups[0]
    assert group['betas'] == (0.5, 0.999) and group['lr'] == 1e-4
    assert group['weight_decay'] == 0
    space = SearchSpace.for_model(model)
    assert group['params'] == [space.alpha]
    assert sum(p.numel() for g in sgd.param_groups for p in g['params']) == \
        sum(p.numel() for p in model.parameters())
    assert sgd.param_groups[0]['lr'] == 0.1
    # One update moves both the weights and alpha.
    space.configure(budget=20)
    space.step()
    before = space.alpha.detach().clone(), model.head.weight.detach().clone()
    loss = nn.functional.cross_entropy(
        model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    wrapper.update_params(loss)
    assert not torch.equal(space.alpha.detach(), before[0])
    assert not torch.equal(model.head.weight.detach(), before[1])


def test_scheduler_scales_weights_lr_not_alpha_lr():
    from mmengine.optim import CosineAnnealingLR
    torch.manual_seed(0)
    model = Classifier()
    wrapper = build_wrapper(model)
    space = SearchSpace.for_model(model)
    space.configure(budget=20)
    scheduler = CosineAnnealingLR(wrapper, T_max=4, eta_min=0.0)
    for _ in range(3):
        space.step()
        loss = model(torch.randn(2, 3, 32, 32)).square().mean()
        wrapper.update_params(loss)
        scheduler.step()
    joint = wrapper.optimizer
    assert joint.optimizers['weights'].param_groups[0]['lr'] < 0.1
    # Whatever the scheduler wrote, Adam stepped with its own lr.
    space.step()
    wrapper.update_params(model(torch.randn(2, 3, 32, 32)).square().mean())
    assert joint.optimizers['alpha'].param_groups[0]['lr'] == 1e-4


def test_loss_scaling_and_clipping_reach_alpha():
    """AMP's GradScaler (CPU here) and clip_grad see alpha's gradient."""
    torch.manual_seed(0)
    model = Classifier()
    wrapper = build_wrapper(model, clip_grad=dict(max_norm=1e-3))
    space = SearchSpace.for_model(model)
    space.configure(budget=20)
    x = torch.randn(2, 3, 32, 32)
    space.step()
    scaler = torch.amp.GradScaler('cpu', init_scale=1024.0)
    loss = model(x).square().mean()
    scaler.scale(loss).backward()
    scaled = space.alpha.grad.clone()
    scaler.unscale_(wrapper.optimizer)
    assert torch.allclose(space.alpha.grad * 1024.0, scaled)
    wrapper._clip_grad()
    total = torch.sqrt(
        sum(p.grad.square().sum() for g in wrapper.optimizer.param_groups
            for p in g['params'] if p.grad is not None))
    assert total <= 1e-3 * 1.001


def test_state_dict_holds_both_parts_and_loads():
    torch.manual_seed(0)
    model = Classifier()
    wrapper = build_wrapper(model)
    space = SearchSpace.for_model(model)
    space.configure(budget=20)
    space.step()
    wrapper.update_params(model(torch.randn(2, 3, 32, 32)).square().mean())
    state = wrapper.state_dict()
    assert set(state) >= {'weights', 'alpha'}
    assert state['alpha']['state'][0]['exp_avg'].shape == (44, )
    other = build_wrapper(Classifier())
    other.load_state_dict(state)
    assert torch.equal(
        other.optimizer.optimizers['alpha'].state_dict()['state'][0]
        ['exp_avg'], state['alpha']['state'][0]['exp_avg'])


def test_hook_is_registered_everywhere():
    from mmdet.registry import HOOKS as DET
    from mmengine.registry import HOOKS as ENGINE
    from mmpretrain.registry import HOOKS as CLS
    from repnas_mm.search.repnas_hook import RepNASHook
    for registry in (ENGINE, CLS, DET):
        assert registry.get('RepNASHook') is RepNASHook


@pytest.mark.slow
def test_real_short_search_writes_arch_and_figure(tmp_path, cifar10_tiny):
    work = tmp_path / 'search'
    proc = run_tool('tools/train.py', SEARCH_CFG, '--work-dir', work,
                    '--cfg-options', 'train_cfg.max_epochs=2',
                    'custom_hooks.0.fix_epoch=1',
                    *cls_data_options(cifar10_tiny))
    log = proc.stdout + proc.stderr
    assert 'RepNAS: 7 blocks, 44 legal branches, budget 22' in log
    assert 'architecture fixed at epoch 1' in log
    # The search's validation (epoch 1) re-estimates BN statistics; the
    # fixed architecture's (epoch 2) uses its own.
    assert log.count('BN statistics re-estimated on 16 training images') \
        == 1
    arch = json.loads((work / 'searched_arch.json').read_text())
    assert arch['budget'] == 22 and arch['num_branches'] == 22
    assert sum(len(b['branches']) for b in arch['blocks']) == 22
    assert all(b['branches'] for b in arch['blocks'])
    assert json.loads((work / 'arch' / 'epoch_1.json').read_text())[
        'num_branches'] == 22
    png = (work / 'searched_arch.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10_000
    # The searched architecture rebuilds the network.
    net = ODBBNet(
        dict(
            name='demo',
            stem_channels=16,
            channels=(16, 32, 64, 128),
            num_blocks=(1, 2, 2, 1),
            strides=(2, 2, 2, 2)),
        branches=str(work / 'searched_arch.json'))
    assert sum(len(b.branch_names) for b in net.blocks()) == 22
    ckpt = torch.load(work / 'epoch_2.pth', weights_only=True)
    assert ckpt['repnas']['space']['alpha'].shape == (44, )
    # tools/test.py re-estimates BN statistics on request.
    proc = run_tool('tools/test.py', SEARCH_CFG, work / 'epoch_2.pth',
                    '--work-dir', tmp_path / 'test', '--bn-recalibration',
                    '16', '--cfg-options', *cls_data_options(cifar10_tiny))
    log = proc.stdout + proc.stderr
    assert 'BN statistics re-estimated on 16 training images before ' \
        'testing' in log and 'accuracy/top1' in log


def _search_cfg(tmp_path, probe, online=False):
    cfg = tmp_path / 'search_probe.py'
    cfg.write_text(
        ("model = dict(backbone=dict(form='online'))\n" if online else '') +
        f"_base_ = '{SEARCH_CFG}'\n"
        "custom_imports = dict(imports=['repnas_mm', 'tests.probes'])\n"
        "custom_hooks = [dict(type='RepNASHook', budget=0.5, seed=0),\n"
        f"                dict(type='MaskProbeHook', out='{probe}')]\n"
        "train_dataloader = dict(\n"
        "    batch_size=8, dataset=dict(indices=list(range(0, 160, 5))))\n"
        "optim_wrapper = dict(alpha_optimizer=dict(lr=0.05))\n")
    return cfg


def _records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
@pytest.mark.parametrize('online', [False, True])
def test_ddp_ranks_use_identical_masks(tmp_path, cifar10_tiny, online):
    probe = tmp_path / 'masks'
    cfg = _search_cfg(tmp_path, probe, online)
    run_dist_train(cfg, 2, '--work-dir', tmp_path / 'ddp',
                   '--cfg-options', 'train_cfg.max_epochs=2',
                   'train_dataloader.batch_size=4',
                   *cls_data_options(cifar10_tiny))
    rank0, rank1 = (_records(f'{probe}.rank{r}.jsonl') for r in (0, 1))
    assert len(rank0) == len(rank1) == 8  # 32 images / (2 ranks x 4), 2 epochs
    assert len({tuple(r['mask']) for r in rank0}) > 1  # masks do change
    assert all(r['online'] == online for r in rank0 + rank1)
    for a, b in zip(rank0, rank1):
        assert a['iter'] == b['iter'] and a['mask'] == b['mask']
        assert sum(a['mask']) == 22
        # alpha's gradient is averaged, so alpha stays identical too.
        assert a['alpha'] == pytest.approx(b['alpha'], abs=1e-7)
    assert max(abs(v) for v in rank0[-1]['alpha']) > 0


@pytest.mark.slow
@pytest.mark.parametrize('online', [False, True])
def test_stop_and_resume_reproduces_masks_and_alpha(tmp_path, cifar10_tiny,
                                                    online):
    env = {'PYTHONPATH': str(REPO)}
    options = ['--cfg-options', 'train_cfg.max_epochs=2',
               *cls_data_options(cifar10_tiny)]
    straight = tmp_path / 'straight'
    cfg = _search_cfg(tmp_path, straight, online)
    run_tool('tools/train.py', cfg, '--work-dir', tmp_path / 'a', *options,
             env=env)
    # The same run, stopped after epoch 1 and resumed.
    stopped = tmp_path / 'stopped'
    cfg_b = tmp_path / 'search_probe_b.py'
    cfg_b.write_text(cfg.read_text().replace(str(straight), str(stopped)))
    run_tool('tools/train.py', cfg_b, '--work-dir', tmp_path / 'b',
             '--cfg-options', 'train_cfg.max_epochs=1',
             *cls_data_options(cifar10_tiny), env=env)
    run_tool('tools/train.py', cfg_b, '--work-dir', tmp_path / 'b',
             '--resume', *options, env=env)
    a = _records(f'{straight}.rank0.jsonl')
    b = _records(f'{stopped}.rank0.jsonl')
    assert [r['iter'] for r in a] == [r['iter'] for r in b] == list(
        range(8))
    assert all(r['online'] == online for r in a + b)
    for ra, rb in zip(a, b):
        assert ra['mask'] == rb['mask'], ra['iter']
        assert ra['alpha'] == pytest.approx(rb['alpha'], abs=1e-6)
    assert not math.isclose(sum(map(abs, a[-1]['alpha'])), 0.0)


def _retrain_cfg(tmp_path, name, probe):
    cfg = tmp_path / f'{name}.py'
    cfg.write_text(
        f"_base_ = '{SEARCH_CFG}'\n"
        "custom_imports = dict(imports=['repnas_mm', 'tests.probes'])\n"
        "custom_hooks = [dict(type='RepNASHook', budget=0.5, seed=0,\n"
        "                     fix_epoch=2, at_fix='retrain'),\n"
        f"                dict(type='WeightsProbeHook', out='{probe}')]\n"
        "train_dataloader = dict(\n"
        "    batch_size=8, dataset=dict(indices=list(range(0, 160, 5))))\n"
        "optim_wrapper = dict(alpha_optimizer=dict(lr=0.05))\n"
        # The search's own cosine, then the searched network's.
        "param_scheduler = [\n"
        "    dict(type='CosineAnnealingLR', T_max=2, begin=0, end=2),\n"
        "    dict(type='CosineAnnealingLR', T_max=2, begin=2, end=4)]\n")
    return cfg


@pytest.mark.slow
def test_retrain_at_fix_restarts_and_resumes_across_the_fix_point(
        tmp_path, cifar10_tiny):
    env = {'PYTHONPATH': str(REPO)}
    data = cls_data_options(cifar10_tiny)
    straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
    proc = run_tool('tools/train.py', _retrain_cfg(tmp_path, 'a', straight),
                    '--work-dir', tmp_path / 'a', '--cfg-options',
                    'train_cfg.max_epochs=4', *data, env=env)
    log = proc.stdout + proc.stderr
    assert 'fixed from epoch 2 (retrain)' in log
    assert 'lr back to the initial value(s)' in log
    assert 'the searched network is retrained from the start' in log
    a = {r['epoch']: r for r in _records(f'{straight}.jsonl')}
    # Epoch 2 starts from the weights and BN statistics epoch 0 started
    # from, with no optimizer state and the initial lr (its cosine's start);
    # the search's epochs had moved them.
    for key in ('weights', 'bn'):
        assert a[2][key] == a['start'][key] == a[0][key]
        assert a[1][key] != a['start'][key] and a[3][key] != a[2][key]
    assert a[1]['state'] > 0 and a[2]['state'] == 0
    assert a[0]['lr'] == a[2]['lr'] == 0.05
    assert 0 < a[1]['lr'] < 0.05 and 0 < a[3]['lr'] < 0.05
    # The same run stopped after epoch 1 (before the fix) and resumed: its
    # checkpoint carries the start weights, and the run ends the same.
    cfg_b = _retrain_cfg(tmp_path, 'b', stopped)
    run_tool('tools/train.py', cfg_b, '--work-dir', tmp_path / 'b',
             '--cfg-options', 'train_cfg.max_epochs=1', *data, env=env)
    ckpt = torch.load(tmp_path / 'b' / 'epoch_1.pth', weights_only=False)
    assert 'start_weights' in ckpt['repnas']
    run_tool('tools/train.py', cfg_b, '--work-dir', tmp_path / 'b',
             '--resume', '--cfg-options', 'train_cfg.max_epochs=4', *data,
             env=env)
    b = {r['epoch']: r for r in _records(f'{stopped}.jsonl')}
    assert b[2]['weights'] == a['start']['weights'] and b[2]['state'] == 0
    final_a = torch.load(tmp_path / 'a' / 'epoch_4.pth', weights_only=False)
    final_b = torch.load(tmp_path / 'b' / 'epoch_4.pth', weights_only=False)
    assert 'start_weights' not in final_a['repnas']  # dropped once fixed
    # tools/test.py takes the retraining config and its checkpoint.
    proc = run_tool('tools/test.py', tmp_path / 'a.py',
                    tmp_path / 'a' / 'epoch_4.pth', '--work-dir',
                    tmp_path / 'test', '--cfg-options', *data, env=env)
    assert 'accuracy/top1' in proc.stdout + proc.stderr
    assert final_a['repnas']['architecture'] == \
        final_b['repnas']['architecture']
    for key, value in final_a['state_dict'].items():
        assert torch.allclose(value.float(),
                              final_b['state_dict'][key].float(),
                              atol=1e-5), key


def _demo_model_and_loader(root):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import Runner
    cfg = Config.fromfile(SEARCH_CFG)
    cfg.train_dataloader.dataset.data_root = str(root)
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    return MODELS.build(cfg.model), Runner.build_dataloader(
        cfg.train_dataloader)


def test_bn_recalibration_estimates_the_architecture_on_real_images(
        cifar10_tiny):
    from repnas_mm.search.bn_calibration import (bn_state, load_bn_state,
                                                 recalibrate_bn)
    model, loader = _demo_model_and_loader(cifar10_tiny)
    stem_bn = model.backbone.stem.conv.branches['kxk'].bn
    before = bn_state(model)
    inputs = []
    handle = stem_bn.register_forward_pre_hook(
        lambda m, args: inputs.append(args[0].mean((0, 2, 3))))
    seen = recalibrate_bn(model, loader, num_images=16)
    handle.remove()
    # One batch of 16 real images, statistics from reset buffers (not a
    # momentum step from the old ones), momentum put back, eval mode.
    assert seen == 16 and len(inputs) == 1
    assert torch.allclose(stem_bn.running_mean, inputs[0], atol=1e-6)
    assert int(stem_bn.num_batches_tracked) == 1
    assert stem_bn.momentum == 0.1 and not model.training
    after = bn_state(model)
    assert not torch.allclose(after['backbone.stem.conv.branches.kxk.bn.'
                                    'running_mean'],
                              before['backbone.stem.conv.branches.kxk.bn.'
                                     'running_mean'])
    load_bn_state(model, before)
    assert all(torch.equal(v, bn_state(model)[k]) for k, v in before.items())


def test_hook_recalibrates_for_validation_and_puts_training_back(
        cifar10_tiny):
    import random

    import numpy as np
    from types import SimpleNamespace
    from repnas_mm.search.bn_calibration import bn_state
    from repnas_mm.search.repnas_hook import RepNASHook
    model, loader = _demo_model_and_loader(cifar10_tiny)
    hook = RepNASHook(budget=22, bn_recalibration=32)
    hook.space = SearchSpace.for_model(model)
    hook.space.configure(22, 1.0, 0)
    hook._training = True
    runner = SimpleNamespace(model=model, train_dataloader=loader, epoch=0)
    training_bn = bn_state(model)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    hook.before_val_epoch(runner)
    # Validation sees statistics of the evaluated (best) architecture ...
    assert sum(len(b.active) for b in hook.space.blocks) == 22
    val_bn = bn_state(model)
    changed = [k for k in val_bn
               if k.endswith('running_var')
               and not torch.equal(val_bn[k], training_bn[k])]
    assert changed
    # ... drawn without moving the random streams of training ...
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    hook.after_val_epoch(runner)
    # ... and training goes on with its own statistics.
    assert all(torch.equal(v, bn_state(model)[k])
               for k, v in training_bn.items())
    # Once fixed, the architecture's statistics are its own: no recalibration.
    hook.space.fix()
    hook.before_val_epoch(runner)
    assert hook._train_bn is None


def test_test_time_hook_re_estimates_bn_statistics(cifar10_tiny):
    from types import SimpleNamespace
    from repnas_mm.search.bn_calibration import bn_state
    from repnas_mm.search.bn_hook import BNRecalibrationHook
    model, loader = _demo_model_and_loader(cifar10_tiny)
    before = bn_state(model)
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    BNRecalibrationHook(num_images=16).before_test_epoch(
        SimpleNamespace(model=model, train_dataloader=loader))
    after = bn_state(model)
    assert torch.rand(1) == expected  # random streams untouched
    counts = [v for k, v in after.items() if k.endswith('batches_tracked')]
    assert all(int(c) == 1 for c in counts)  # one batch, from reset
    assert not all(torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(ValueError, match='num_images must be > 0'):
        BNRecalibrationHook(num_images=0)
