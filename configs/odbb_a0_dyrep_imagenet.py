# DyRep as the second policy over ODBBNet-A0 (the RepNAS search is the first): every block starts
# from its main 3x3 branch alone and grows to all its legal branches where synflow says it helps
# most; weak branches are de-parameterized. Own kernels per branch (weight_sharing=False): growth
# adjusts the main kernel, which shared branches would see.
#   bash tools/dist_train.sh configs/odbb_a0_dyrep_imagenet.py 8
_base_ = './baselines/odbb_a0_full_imagenet.py'

model = dict(backbone=dict(branches='full', weight_sharing=False))
custom_hooks = [
    dict(
        type='DyRepHook',
        interval=5,
        grow_to='full',
        metric='synflow',
        num_grow=1,
        bn_scale=0.01,
        deparam_ratio=0.05)
]
model_wrapper_cfg = dict(
    type='MMDistributedDataParallel', find_unused_parameters=True)
