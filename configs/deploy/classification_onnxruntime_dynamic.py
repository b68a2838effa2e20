# mmpretrain classifiers (ODBBNet and its fused form) to ONNX Runtime, dynamic batch size (height
# and width are those the config's test pipeline gives). The default of tools/deploy.py --onnx.
_base_ = ['./classification_onnxruntime_static.py']

onnx_config = dict(
    input_shape=None,
    dynamic_axes=dict(input={0: 'batch'}, output={0: 'batch'}))
