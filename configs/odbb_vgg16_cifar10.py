# RepNAS search of VGG-16 on CIFAR-10 (RepNAS Sec. 4.1, Table 3): 600 epochs, batch 128.
# Budget 39 branches for the 13 blocks (RepVGG's three per block); Adam for alpha as on ImageNet;
# architecture fixed from epoch 480, then the searched network trains on.
#   python tools/train.py configs/odbb_vgg16_cifar10.py
_base_ = [
    './baselines/odbb_vgg16_full_cifar10.py',
    './_base_/settings/repnas_search.py'
]

optim_wrapper = _base_.repnas_optim_wrapper
custom_hooks = [dict(_base_.repnas_hook, budget=39, fix_epoch=480)]
