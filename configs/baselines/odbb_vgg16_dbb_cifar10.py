# Baseline (RepNAS Table 3): VGG-16 on CIFAR-10 with the 'dbb' preset in every block.
_base_ = './odbb_vgg16_full_cifar10.py'

model = dict(backbone=dict(branches='dbb'))
