# Smoke config: the stock mmpretrain ResNet-18 CIFAR-10 recipe on class folders
# (configs/resnet18_cifar10_folders.py) on the real images of tests/data/cifar10_tiny, one
# iteration. Tests override data_root.
_base_ = '../../configs/resnet18_cifar10_folders.py'

data_root = '{{ fileDirname }}/../data/cifar10_tiny'
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    dataset=dict(
        data_root=data_root,
        indices=list(range(0, 160, 10))))  # 16, class-balanced: 1 iteration
val_dataloader = dict(
    batch_size=32,
    num_workers=0,
    dataset=dict(data_root=data_root, indices=list(range(0, 60))))  # all 60
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1, val_interval=1)
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0)
