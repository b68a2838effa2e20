# mmdet detectors to ONNX Runtime with dynamic batch, height and width (CenterNet's test
# pipeline pads each image to its own size).
_base_ = ['./detection_onnxruntime_static.py']

onnx_config = dict(
    input_shape=None,
    dynamic_axes=dict(
        input={0: 'batch', 2: 'height', 3: 'width'},
        dets={0: 'batch', 1: 'num_dets'},
        labels={0: 'batch', 1: 'num_dets'}))
