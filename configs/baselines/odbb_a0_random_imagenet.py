# Baseline: ODBB-A0 on ImageNet with a random architecture of 66 branches (RepNAS Sec. 4.1's
# random search draws 25 such seeds, trains each briefly and retrains the best).
_base_ = './odbb_a0_full_imagenet.py'

model = dict(backbone=dict(branches=dict(_delete_=True, type='random', budget=66, seed=0)))
