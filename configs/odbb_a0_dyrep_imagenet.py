# DyRep as the second policy over ODBBNet-A0 (the RepNAS search is the first): every block starts
# from its main 3x3 branch alone and grows to all its legal branches where synflow says it helps
# most; weak branches are de-parameterized. Own kernels per branch (weight_sharing=False): growth
# adjusts the main kernel, which shared branches would see.
#   bash tools/dist_train.sh configs/odbb_a0_dyrep_imagenet.py 8
_base_ = [
    './baselines/odbb_a0_full_imagenet.py', './_base_/settings/dyrep.py'
]

model = dict(backbone=dict(branches='full', weight_sharing=False))
custom_hooks = [dict(_base_.dyrep_hook, grow_to='full')]
