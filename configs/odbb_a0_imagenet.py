# RepNAS search of ODBB-A0 on ImageNet-1k (RepNAS Sec. 4.2, Table 4): one-stage, 150 epochs.
# Every block starts with all its legal branches (149 on A0); each iteration keeps the global
# top-66 (RepVGG-A0's branch count, as in Table 4) by alpha + logistic noise, trains the
# weights with SGD and alpha with Adam (lr 1e-4, betas (0.5, 0.999)) in one backward pass.
# From epoch 120 the architecture is fixed (top-66 on alpha) and the searched network trains on;
# work_dir/searched_arch.json (+ .png) is the result, fused with tools/deploy.py.
#   python tools/train.py configs/odbb_a0_imagenet.py
#   bash tools/dist_train.sh configs/odbb_a0_imagenet.py 8
_base_ = './baselines/odbb_a0_full_imagenet.py'

custom_hooks = [
    dict(
        type='RepNASHook',
        budget=66,  # a count, or a float ratio of all legal branches
        temperature=1.0,
        warmup_epochs=0,
        fix_epoch=120,
        seed=0)
]
optim_wrapper = dict(
    constructor='RepNASOptimWrapperConstructor',
    alpha_optimizer=dict(
        type='Adam', lr=1e-4, betas=(0.5, 0.999), weight_decay=0.0))
# Pruned branches get no gradient in an iteration.
model_wrapper_cfg = dict(
    type='MMDistributedDataParallel', find_unused_parameters=True)
