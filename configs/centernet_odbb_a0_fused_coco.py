# CenterNet-ODBB-A0 started from the *fused* searched backbone: the classification checkpoint's
# multi-branch weights are fused on load, and COCO fine-tunes the plain (RepVGG-like) network.
_base_ = './centernet_odbb_a0_coco.py'

model = dict(backbone=dict(deploy=True))
