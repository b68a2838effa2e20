# mmpretrain classifiers (ODBBNet and its fused form) to ONNX Runtime, one fixed input size.
# The size must be the model's test resolution (224 for the ImageNet configs); for another, inherit
# this file: `_base_ = ['<repnas_mm>/configs/deploy/classification_onnxruntime_static.py']` and
# `onnx_config = dict(input_shape=[32, 32])`, then `tools/deploy.py ... --onnx --deploy-cfg it`.
_base_ = ['./_base_/onnxruntime.py']

codebase_config = dict(type='mmpretrain', task='Classification')
onnx_config = dict(input_shape=[224, 224])
