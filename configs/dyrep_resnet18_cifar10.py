# DyRep, short CIFAR-10 run: mmpretrain's CIFAR ResNet-18 converted as in
# dyrep_resnet18_imagenet.py, on class-per-folder images (the layout of
# tests/data/cifar10_tiny: train/<class>/*.jpg, val/<class>/*.jpg), 20 epochs, growing every
# 2 epochs. Set data_root (or --cfg-options) to your folder.
#   python tools/train.py configs/dyrep_resnet18_cifar10.py \
#       --cfg-options train_dataloader.dataset.data_root=path/to/cifar10_classes \
#                     val_dataloader.dataset.data_root=path/to/cifar10_classes
_base_ = [
    'mmpretrain::resnet/resnet18_8xb16_cifar10.py', './_base_/settings/dyrep.py'
]

custom_imports = dict(imports=['repnas_mm'], allow_failed_imports=False)

data_root = 'data/cifar10'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ODBBConverted',
        backbone=dict(
            type='ResNet_CIFAR',
            depth=18,
            num_stages=4,
            out_indices=(3, ),
            style='pytorch'),
        branches='dbb',
        input_size=32))
data_preprocessor = dict(to_rgb=True)  # JPEGs load as BGR
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomCrop', crop_size=32, padding=4),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=32,
    num_workers=2,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix='train',
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=100,
    num_workers=2,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        data_prefix='val',
        pipeline=test_pipeline))
test_dataloader = val_dataloader
max_epochs = 20
param_scheduler = dict(
    _delete_=True,
    type='CosineAnnealingLR',
    T_max=max_epochs,
    by_epoch=True,
    convert_to_iter_based=True)
train_cfg = dict(max_epochs=max_epochs)
custom_hooks = [dict(_base_.dyrep_hook, interval=2, num_grow=2, input_size=32)]
