# Baseline: ODBB-A0 on ImageNet-1k with a fixed branch set in every block (no search):
# mmpretrain's RepVGG-A0 recipe with every 3x3 conv an ODBB (RepNAS Table 1: 150 epochs,
# batch 256 = 8 GPUs x 32, SGD lr 0.1, weight decay 1e-4, cosine; RepVGG's augmentation).
# Data at data/imagenet in mmpretrain's ImageNet layout. The other presets inherit this file;
# the RepNAS search (../odbb_a0_imagenet.py) searches this all-branch supernet.
#   bash tools/dist_train.sh configs/baselines/odbb_a0_full_imagenet.py 8
_base_ = 'mmpretrain::repvgg/repvgg-A0_8xb32_in1k.py'

custom_imports = dict(imports=['repnas_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='ODBBNet',
        arch='A0',
        branches='full',  # preset name, per-block lists, or searched_arch.json
        weight_sharing=True,
        out_indices=(3, )))

# No weight decay on BN (every branch has its own) or biases, as RepVGG trains.
optim_wrapper = dict(
    paramwise_cfg=dict(_delete_=True, norm_decay_mult=0.0,
                       bias_decay_mult=0.0))

max_epochs = 150
param_scheduler = dict(T_max=max_epochs, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
