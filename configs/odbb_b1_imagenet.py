# RepNAS search of ODBB-B1 on ImageNet-1k: as odbb_a0_imagenet.py, budget 84 (RepVGG-B1's
# branch count, RepNAS Table 4), 150 epochs, architecture fixed from epoch 120.
_base_ = './odbb_a0_imagenet.py'

model = dict(
    backbone=dict(arch='B1'), head=dict(in_channels=2048))
custom_hooks = [dict(_base_.repnas_hook, budget=84, fix_epoch=120)]
