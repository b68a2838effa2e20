# CenterNet-ODBB-A0 that goes on searching on COCO (as DyRep argues pays off): every block starts
# with all its legal branches, the weights and alpha come from the classification search
# (load_from warm-starts alpha), and RepNASHook keeps the best 66 branches, fixing the
# architecture when the learning rate first drops (epoch 18 of 28 x 5).
_base_ = [
    './centernet_odbb_a0_coco.py', './_base_/settings/repnas_search.py'
]

model = dict(backbone=dict(branches='full', init_cfg=None))
load_from = 'work_dirs/odbb_a0_imagenet/epoch_150.pth'  # the classification search's checkpoint
optim_wrapper = _base_.repnas_optim_wrapper
custom_hooks = [dict(_base_.repnas_hook, budget=66, fix_epoch=18)]
