# RepNAS search of ODBB-B3 on ImageNet-1k: as odbb_a0_imagenet.py, budget 84 (RepVGG-B3's
# branch count, RepNAS Table 4), 240 epochs, architecture fixed from epoch 192.
_base_ = './odbb_a0_imagenet.py'

model = dict(
    backbone=dict(arch='B3'), head=dict(in_channels=2560))
custom_hooks = [dict(_base_.repnas_hook, budget=84, fix_epoch=192)]
max_epochs = 240
param_scheduler = dict(T_max=max_epochs, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
