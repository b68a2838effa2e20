# Baseline: ODBB-A0 on ImageNet with the 'dbb' branch preset in every block.
_base_ = './odbb_a0_full_imagenet.py'

model = dict(backbone=dict(branches='dbb'))
