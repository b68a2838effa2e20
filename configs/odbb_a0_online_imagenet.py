# The RepNAS search of ODBB-A0 on ImageNet-1k (./odbb_a0_imagenet.py) with online blocks (OREPA
# form, issue 17): every ODBB composes its kept branches into one 3x3 kernel each forward pass and
# runs one conv + one BN, the branches' BNs replaced by per-channel scales. Same search, same
# budget, same fused network; a training step costs about a plain network's instead of ~3x
# (README "Online or offline"). Fused with tools/deploy.py like any other run.
#   python tools/train.py configs/odbb_a0_online_imagenet.py
_base_ = './odbb_a0_imagenet.py'

model = dict(backbone=dict(form='online'))
