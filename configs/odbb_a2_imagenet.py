# RepNAS search of ODBB-A2 on ImageNet-1k: as odbb_a0_imagenet.py, budget 66 (RepVGG-A2's
# branch count, RepNAS Table 4), 150 epochs, architecture fixed from epoch 120.
_base_ = './odbb_a0_imagenet.py'

model = dict(
    backbone=dict(arch='A2'), head=dict(in_channels=1408))
custom_hooks = [dict(_base_.repnas_hook, budget=66, fix_epoch=120)]
