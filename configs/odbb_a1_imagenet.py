# RepNAS search of ODBB-A1 on ImageNet-1k: as odbb_a0_imagenet.py, budget 66 (RepVGG-A1's
# branch count, RepNAS Table 4), 150 epochs, architecture fixed from epoch 120.
_base_ = './odbb_a0_imagenet.py'

model = dict(
    backbone=dict(arch='A1'), head=dict(in_channels=1280))
custom_hooks = [dict(_base_.repnas_hook, budget=66, fix_epoch=120)]
