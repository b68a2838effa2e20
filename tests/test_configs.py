"""The configs inherit as documented: one place for each setting.

Search and DyRep settings live in ``configs/_base_/settings/``; every
per-arch config derives its hook from there, so a change to the fragment
reaches all of them. These tests edit a copy of ``configs/`` and read every
config back with mmengine.
"""
import shutil
from pathlib import Path

import pytest
from mmengine.config import Config

from .conftest import REPO

SEARCH = ['odbb_a0_imagenet.py', 'odbb_a1_imagenet.py', 'odbb_a2_imagenet.py',
          'odbb_b1_imagenet.py', 'odbb_b2_imagenet.py', 'odbb_b3_imagenet.py',
          'odbb_vgg16_cifar10.py', 'centernet_odbb_a0_search_coco.py',
          'demo/odbb_fmnist_cls.py', 'odbb_a0_online_imagenet.py',
          'demo/odbb_fmnist_online_cls.py',
          'demo/odbb_cifar10_subset_online_cls.py',
          'odbb_a0_quant_friendly_imagenet.py',
          'demo/odbb_fmnist_quant_friendly_cls.py',
          'demo/odbb_cifar10_subset_quant_friendly_cls.py']
# Search configs in another block form (online: OREPA; quant_friendly:
# QARepVGG): the standard config they inherit from, and the option they set.
FORMS = {'odbb_a0_online_imagenet.py': ('odbb_a0_imagenet.py', 'online'),
         'demo/odbb_fmnist_online_cls.py': ('demo/odbb_fmnist_cls.py',
                                            'online'),
         'demo/odbb_cifar10_subset_online_cls.py':
         ('demo/odbb_cifar10_subset_cls.py', 'online'),
         'odbb_a0_quant_friendly_imagenet.py': ('odbb_a0_imagenet.py',
                                                'quant_friendly'),
         'demo/odbb_fmnist_quant_friendly_cls.py':
         ('demo/odbb_fmnist_cls.py', 'quant_friendly'),
         'demo/odbb_cifar10_subset_quant_friendly_cls.py':
         ('demo/odbb_cifar10_subset_cls.py', 'quant_friendly')}
DYREP = ['odbb_a0_dyrep_imagenet.py', 'odbb_vgg16_dyrep_cifar10.py',
         'dyrep_resnet18_imagenet.py', 'dyrep_resnet18_cifar10.py']
# What each config sets itself (the rest comes from the fragment).
OWN = {
    'odbb_a0_imagenet.py': dict(budget=66, fix_epoch=120),
    'odbb_a1_imagenet.py': dict(budget=66, fix_epoch=120),
    'odbb_a2_imagenet.py': dict(budget=66, fix_epoch=120),
    'odbb_b1_imagenet.py': dict(budget=84, fix_epoch=120),
    'odbb_b2_imagenet.py': dict(budget=84, fix_epoch=120),
    'odbb_b3_imagenet.py': dict(budget=84, fix_epoch=192),
    'odbb_vgg16_cifar10.py': dict(budget=39, fix_epoch=480),
    'centernet_odbb_a0_search_coco.py': dict(budget=66, fix_epoch=18),
    'demo/odbb_fmnist_cls.py': dict(budget=0.5, fix_epoch=3, warmup_epochs=1,
                                    at_fix='retrain'),
    'odbb_a0_online_imagenet.py': dict(budget=66, fix_epoch=120),
    'demo/odbb_fmnist_online_cls.py': dict(budget=0.5, fix_epoch=3,
                                           at_fix='retrain'),
    'demo/odbb_cifar10_subset_online_cls.py': dict(budget=0.5, fix_epoch=6,
                                                   at_fix='retrain'),
    'odbb_a0_quant_friendly_imagenet.py': dict(budget=66, fix_epoch=120),
    'demo/odbb_fmnist_quant_friendly_cls.py': dict(budget=0.5, fix_epoch=3,
                                                   at_fix='retrain'),
    'demo/odbb_cifar10_subset_quant_friendly_cls.py': dict(
        budget=0.5, fix_epoch=6, at_fix='retrain'),
    'odbb_a0_dyrep_imagenet.py': dict(grow_to='full', interval=5),
    'odbb_vgg16_dyrep_cifar10.py': dict(grow_to='full', interval=2),
    'dyrep_resnet18_imagenet.py': dict(grow_to='dbb', interval=5),
    'dyrep_resnet18_cifar10.py': dict(grow_to='dbb', interval=2),
}
# The demo's few epochs need a faster alpha (its own setting).
ALPHA_LR = {'demo/odbb_fmnist_cls.py': 0.02,
            'demo/odbb_fmnist_online_cls.py': 0.02,
            'demo/odbb_cifar10_subset_online_cls.py': 4e-3,
            'demo/odbb_fmnist_quant_friendly_cls.py': 0.02,
            'demo/odbb_cifar10_subset_quant_friendly_cls.py': 4e-3}


def _hook(cfg, kind):
    hooks = [h for h in cfg.get('custom_hooks', []) if h['type'] == kind]
    assert len(hooks) == 1, cfg.get('custom_hooks')
    return hooks[0]


@pytest.fixture
def configs_copy(tmp_path):
    return Path(shutil.copytree(REPO / 'configs', tmp_path / 'configs'))


def test_every_config_reads_and_search_configs_are_complete():
    names = sorted(p.relative_to(REPO / 'configs').as_posix()
                   for p in (REPO / 'configs').rglob('*.py')
                   if '_base_' not in p.parts)
    assert set(SEARCH + DYREP) <= set(names)
    for name in names:
        cfg = Config.fromfile(REPO / 'configs' / name)
        if name.startswith('deploy/'):  # mmdeploy deploy configs
            assert cfg.backend_config.type == 'onnxruntime', name
            assert cfg.codebase_config.type in ('mmpretrain', 'mmdet'), name
        else:
            assert 'model' in cfg, name
    for name in SEARCH:
        cfg = Config.fromfile(REPO / 'configs' / name)
        hook = _hook(cfg, 'RepNASHook')
        assert {k: hook[k] for k in OWN[name]} == OWN[name], name
        assert hook['temperature'] == 1.0 and hook['seed'] == 0, name
        assert cfg.optim_wrapper.constructor == \
            'RepNASOptimWrapperConstructor', name
        assert cfg.optim_wrapper.alpha_optimizer.lr == ALPHA_LR.get(
            name, 1e-4), name
        assert cfg.model_wrapper_cfg.find_unused_parameters, name
    for name, (standard, option) in FORMS.items():
        cfg = Config.fromfile(REPO / 'configs' / name)
        twin = Config.fromfile(REPO / 'configs' / standard)
        assert cfg.model.backbone.pop('form') == option, name
        assert 'form' not in twin.model.backbone, standard
        # The config changes nothing else.
        for key in ('model', 'optim_wrapper', 'custom_hooks', 'train_cfg',
                    'param_scheduler', 'train_dataloader'):
            assert cfg[key] == twin[key], (name, key)
    for name in DYREP:
        cfg = Config.fromfile(REPO / 'configs' / name)
        hook = _hook(cfg, 'DyRepHook')
        assert {k: hook[k] for k in OWN[name]} == OWN[name], name
        assert hook['metric'] == 'synflow' and hook['bn_scale'] == 0.01
        assert cfg.model_wrapper_cfg.find_unused_parameters, name


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


def test_a_change_to_the_search_fragment_reaches_every_search_config(
        configs_copy):
    fragment = configs_copy / '_base_' / 'settings' / 'repnas_search.py'
    _edit(fragment, 'temperature=1.0,', 'temperature=0.37,')
    _edit(fragment, 'seed=0,', 'seed=5,')
    _edit(fragment, 'type=\'Adam\', lr=1e-4,', 'type=\'Adam\', lr=3e-4,')
    for name in SEARCH:
        cfg = Config.fromfile(configs_copy / name)
        hook = _hook(cfg, 'RepNASHook')
        assert hook['temperature'] == 0.37 and hook['seed'] == 5, name
        assert {k: hook[k] for k in OWN[name]} == OWN[name], name
        assert cfg.optim_wrapper.alpha_optimizer.lr == ALPHA_LR.get(
            name, 3e-4), name


def test_a_change_to_the_dyrep_fragment_reaches_every_dyrep_config(
        configs_copy):
    fragment = configs_copy / '_base_' / 'settings' / 'dyrep.py'
    _edit(fragment, 'bn_scale=0.01,', 'bn_scale=0.02,')
    _edit(fragment, "metric='synflow',", "metric='snip',")
    for name in DYREP:
        hook = _hook(Config.fromfile(configs_copy / name), 'DyRepHook')
        assert hook['bn_scale'] == 0.02 and hook['metric'] == 'snip', name
        assert {k: hook[k] for k in OWN[name]} == OWN[name], name


def test_one_override_names_the_classification_run():
    """The CenterNet configs start from a run through one key."""
    run = 'work_dirs/other_run/epoch_7.pth'
    for name in ('centernet_odbb_a0_coco.py', 'centernet_odbb_b3_coco.py',
                 'centernet_odbb_a0_nodcn_coco.py',
                 'centernet_odbb_a0_fused_coco.py'):
        cfg = Config.fromfile(REPO / 'configs' / name)
        cfg.merge_from_dict({'model.backbone.branches': run})
        backbone = cfg.model.backbone
        # The weights come from the checkpoint `branches` names.
        assert backbone.branches == run
        assert 'checkpoint' not in backbone.init_cfg, name
        assert backbone.init_cfg.type == 'Pretrained'


# RefConv fine-tuning configs: the plain fine-tune they change, and the
# training config whose result that fine-tune loads.
REFOCUS = {
    'demo/odbb_fmnist_refocus_cls.py': ('demo/odbb_fmnist_finetune_cls.py',
                                        'demo/odbb_fmnist_cls.py'),
    'resnet18_cifar10_refocus.py': ('resnet18_cifar10_finetune.py',
                                    'resnet18_cifar10_folders.py'),
}


def test_refocus_configs_change_only_the_backbone_of_their_fine_tune():
    from repnas_mm.tools.benchmark_refconv import method_config

    from repnas_mm.config import unwrap_converted
    for name, (finetune, first) in REFOCUS.items():
        cfg = Config.fromfile(REPO / 'configs' / name)
        twin = Config.fromfile(REPO / 'configs' / finetune)
        stage1 = Config.fromfile(REPO / 'configs' / first)
        assert cfg.model.backbone.type == 'RefConvConverted', name
        assert cfg.model.backbone.backbone == twin.model.backbone, name
        # tools/benchmark_refconv.py's baseline is the fine-tune config.
        assert method_config(cfg, 'baseline').model == twin.model, name
        unwrap_converted(cfg.model)
        for key in ('model', 'optim_wrapper', 'custom_hooks', 'train_cfg',
                    'param_scheduler', 'train_dataloader', 'val_dataloader',
                    'load_from'):
            assert cfg.get(key) == twin.get(key), (name, key)
        # The fine-tune: the first stage's data and model (fused), loaded
        # from where its documented commands leave it, at a lower lr.
        assert twin.train_dataloader == stage1.train_dataloader, finetune
        assert twin.load_from.startswith(f'work_dirs/{Path(first).stem}/')
        assert twin.optim_wrapper.optimizer.lr < \
            stage1.optim_wrapper.optimizer.lr
        assert not any(h['type'] in ('RepNASHook', 'DyRepHook')
                       for h in twin.get('custom_hooks', []))
    demo = Config.fromfile(REPO / 'configs/demo/odbb_fmnist_finetune_cls.py')
    assert demo.model.backbone.deploy is True
    assert demo.model.backbone.branches == \
        'work_dirs/odbb_fmnist_cls/searched_arch.json'


# Width-search configs (issue 32): the config they inherit from; they add
# the hook's widths= and change nothing else.
LATENCY = {'demo/odbb_fmnist_latency_cls.py': 'demo/odbb_fmnist_cls.py',
           'demo/odbb_cifar10_subset_latency_cls.py':
           'demo/odbb_cifar10_subset_cls.py',
           'odbb_a0_latency_imagenet.py': 'odbb_a0_imagenet.py'}


def test_latency_configs_add_only_the_width_search():
    for name, standard in LATENCY.items():
        cfg = Config.fromfile(REPO / 'configs' / name)
        twin = Config.fromfile(REPO / 'configs' / standard)
        widths = _hook(cfg, 'RepNASHook').pop('widths')
        assert widths['input_size'] == 224 and widths['budget_ratio'] == 0.5
        assert widths['table'].startswith('work_dirs/latency/'), name
        for key in ('model', 'optim_wrapper', 'custom_hooks', 'train_cfg',
                    'param_scheduler', 'train_dataloader'):
            assert cfg[key] == twin[key], (name, key)
