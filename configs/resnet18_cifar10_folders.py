# mmpretrain's stock CIFAR-10 ResNet-18 on class-per-folder JPEGs (train/<class>/*.jpg,
# val/<class>/*.jpg: the layout of tests/data/cifar10_tiny) instead of CIFAR's binary batches,
# with a short schedule (20 epochs, cosine) that fits a CPU: the plain baseline of
# dyrep_resnet18_cifar10.py. Set data_root (or --cfg-options) to your folder.
#   python tools/train.py configs/resnet18_cifar10_folders.py \
#       --cfg-options train_dataloader.dataset.data_root=path/to/cifar10_classes \
#                     val_dataloader.dataset.data_root=path/to/cifar10_classes
_base_ = 'mmpretrain::resnet/resnet18_8xb16_cifar10.py'

data_root = 'data/cifar10'
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
