# Baseline (RepNAS Table 3, random search): VGG-16 on CIFAR-10 with a random architecture of
# 39 branches (3 per block, the RepVGG count). Vary `seed` to draw other architectures.
_base_ = './odbb_vgg16_full_cifar10.py'

model = dict(backbone=dict(branches=dict(_delete_=True, type='random', budget=39, seed=0)))
