# mmdeploy deploy-config parts shared by every config here: the ONNX export (opset 17, the
# TorchScript exporter; repnas_mm fuses and verifies the model first) and the ONNX Runtime backend.
# TensorRT / OpenVINO users replace `backend_config` (and add its model_inputs), as in mmdeploy's
# own configs/_base_/backends/.
onnx_config = dict(
    type='onnx',
    export_params=True,
    keep_initializers_as_inputs=False,
    opset_version=17,
    save_file='end2end.onnx',
    input_names=['input'],
    output_names=['output'],
    input_shape=None,
    optimize=True)
backend_config = dict(type='onnxruntime')
