# The RepNAS search of ODBB-A0 on ImageNet-1k (./odbb_a0_imagenet.py) with quantization-friendly
# blocks (issue 18): QARepVGG's changes for the seven branches (no BN on identity, 1x1, 1xK, Kx1;
# one BN after the sum; docs/int8.md). Same search, same budget; the fused network has the same
# layout and is meant to ship in INT8:
#   python tools/train.py configs/odbb_a0_quant_friendly_imagenet.py
#   python tools/deploy.py configs/odbb_a0_quant_friendly_imagenet.py CKPT --work-dir DIR --int8
_base_ = './odbb_a0_imagenet.py'

model = dict(backbone=dict(form='quant_friendly'))
