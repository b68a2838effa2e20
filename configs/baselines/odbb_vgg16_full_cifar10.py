# Baseline: VGG-16 on CIFAR-10 with every conv an ODBB of all its legal branches, no search
# (RepNAS Sec. 4.1, Table 3: 600 epochs, batch 128, SGD lr 0.1, weight decay 1e-4, padding crop +
# flip as DBB). Data at data/cifar10 (mmpretrain's CIFAR10 layout). Other presets inherit this.
#   python tools/train.py configs/baselines/odbb_vgg16_full_cifar10.py
_base_ = 'mmpretrain::resnet/resnet18_8xb16_cifar10.py'

custom_imports = dict(imports=['repnas_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='ODBBNet',
        arch='vgg16',
        branches='full',
        weight_sharing=True),
    head=dict(in_channels=512))
train_dataloader = dict(batch_size=128)
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
max_epochs = 600
param_scheduler = dict(
    _delete_=True,
    type='CosineAnnealingLR',
    T_max=max_epochs,
    by_epoch=True,
    begin=0,
    end=max_epochs,
    convert_to_iter_based=True)
train_cfg = dict(max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=128)
