# centernet_odbb_b3_coco.py with plain transposed-conv up-sampling (no DCNv2) in CTResNetNeck.
_base_ = './centernet_odbb_b3_coco.py'

model = dict(neck=dict(use_dcn=False))
