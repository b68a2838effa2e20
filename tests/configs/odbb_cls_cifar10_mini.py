# Smoke config: the demo ODBBNet classifier (configs/demo/) on ../shared/data/cifar10_mini, one
# iteration. A classification checkpoint for the detector-initialisation tests.
_base_ = '../../configs/demo/odbb_fmnist_cls.py'

data_root = '{{ fileDirname }}/../../../shared/data/cifar10_mini'
# Class-balanced subsets (the images are sorted by class): 16 train, 32 val.
train_dataloader = dict(
    batch_size=16,
    dataset=dict(data_root=data_root, indices=list(range(0, 3000, 188))))
val_dataloader = dict(
    dataset=dict(data_root=data_root, indices=list(range(0, 600, 19))))
test_dataloader = val_dataloader
max_epochs = 1
param_scheduler = dict(T_max=max_epochs, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
default_hooks = dict(logger=dict(interval=1))
