# The CIFAR-10-subset search (./odbb_cifar10_subset_cls.py) with quantization-friendly blocks
# (QARepVGG's changes for the seven branches; docs/int8.md).
_base_ = './odbb_cifar10_subset_cls.py'

model = dict(backbone=dict(form='quant_friendly'))
