# Smoke config: the demo ODBBNet classifier (configs/demo/) on tests/data/cifar10_tiny, one
# iteration. A classification checkpoint for the detector-initialisation tests.
_base_ = '../../configs/demo/odbb_fmnist_cls.py'

data_root = '{{ fileDirname }}/../data/cifar10_tiny'
# Class-balanced subsets (the images are sorted by class): 16 train, 30 val.
train_dataloader = dict(
    batch_size=16,
    dataset=dict(data_root=data_root, indices=list(range(0, 160, 10))))
val_dataloader = dict(
    dataset=dict(data_root=data_root, indices=list(range(0, 60, 2))))
# cifar10_tiny has no test split: tests compare what tools/test.py reports with the last
# validation, so testing reads the same 30 val images (the demo config tests on 'test').
test_dataloader = dict(
    dataset=dict(data_root=data_root, data_prefix='val', indices=list(range(0, 60, 2))))
max_epochs = 1
# The paper's one-stage run (fixed and trained on); tests set fix_epoch and epochs themselves.
custom_hooks = [dict(_base_.repnas_hook, budget=0.5, warmup_epochs=1, fix_epoch=4)]
param_scheduler = dict(T_max=max_epochs, begin=0, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(logger=dict(interval=1))
