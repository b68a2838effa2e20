# DyRep, short CIFAR-10 run: resnet18_cifar10_folders.py (mmpretrain's CIFAR ResNet-18 on
# class-per-folder images, 20 epochs) with its backbone converted as in dyrep_resnet18_imagenet.py,
# growing every 2 epochs. Set data_root (or --cfg-options) to your folder.
#   python tools/train.py configs/dyrep_resnet18_cifar10.py \
#       --cfg-options train_dataloader.dataset.data_root=path/to/cifar10_classes \
#                     val_dataloader.dataset.data_root=path/to/cifar10_classes
_base_ = ['./resnet18_cifar10_folders.py', './_base_/settings/dyrep.py']

custom_imports = dict(imports=['repnas_mm'], allow_failed_imports=False)

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
custom_hooks = [dict(_base_.dyrep_hook, interval=2, num_grow=2, input_size=32)]
