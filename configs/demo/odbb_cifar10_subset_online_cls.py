# The CIFAR-10-subset search and retraining (./odbb_cifar10_subset_cls.py) with online blocks
# (OREPA form): one conv + one BN per block in training (docs/online.md).
_base_ = './odbb_cifar10_subset_cls.py'

model = dict(backbone=dict(form='online'))
