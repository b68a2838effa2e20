# Smoke config: the stock mmpretrain ResNet-18 CIFAR-10 recipe on the real images of
# tests/data/cifar10_tiny (class-per-folder JPEGs), a few iterations. Tests override data_root.
_base_ = 'mmpretrain::resnet/resnet18_8xb16_cifar10.py'

data_root = '{{ fileDirname }}/../data/cifar10_tiny'
# JPEGs are loaded as BGR (the stock config reads CIFAR's RGB binaries).
data_preprocessor = dict(to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomCrop', crop_size=32, padding=4),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix='train',
        indices=list(range(0, 160, 10)),  # 16, class-balanced: 1 iteration
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32,
    num_workers=0,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix='val',
        indices=list(range(0, 60)),  # 60, class-balanced
        pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1, val_interval=1)
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0)
