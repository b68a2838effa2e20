# RepNAS search of ODBB-A0 on ImageNet-1k (RepNAS Sec. 4.2, Table 4): one-stage, 150 epochs.
# Every block starts with all its legal branches (149 on A0); each iteration keeps the global
# top-66 (RepVGG-A0's branch count, as in Table 4) by alpha + logistic noise, trains the
# weights with SGD and alpha with Adam (lr 1e-4, betas (0.5, 0.999)) in one backward pass.
# From epoch 120 the architecture is fixed (top-66 on alpha) and the searched network trains on;
# work_dir/searched_arch.json (+ .png) is the result, fused with tools/deploy.py.
#   python tools/train.py configs/odbb_a0_imagenet.py
#   bash tools/dist_train.sh configs/odbb_a0_imagenet.py 8
_base_ = [
    './baselines/odbb_a0_full_imagenet.py', './_base_/settings/repnas_search.py'
]

optim_wrapper = _base_.repnas_optim_wrapper
# Budget 66: RepVGG-A0's branch count (Table 4); fixed for the last 20% of training.
custom_hooks = [dict(_base_.repnas_hook, budget=66, fix_epoch=120)]
