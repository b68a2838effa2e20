# DyRep over ODBBNet's VGG-16 layout, the short CIFAR-10 run of dyrep_resnet18_cifar10.py (same
# class-per-folder data and schedule): blocks grow from their 3x3 branch to all legal branches.
_base_ = './dyrep_resnet18_cifar10.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='ODBBNet',
        arch='vgg16',
        branches='full',
        weight_sharing=False),
    head=dict(in_channels=512))
custom_hooks = [
    dict(_base_.dyrep_hook, interval=2, grow_to='full', num_grow=2, input_size=32)
]
