# mmdet detectors (CenterNet with an ODBBNet backbone, no DCNv2) to ONNX Runtime, mmdeploy's
# post-processing in the graph (outputs `dets` [x1, y1, x2, y2, score] and `labels`).
# Static: the graph's input size is that of the export image after the test pipeline (CenterNet's
# pipeline pads each image, it does not resize: 128x128 images give 160x160), so every image given
# to the exported model must come out of the pipeline at that size (one camera, one resolution).
# Otherwise use detection_onnxruntime_dynamic.py, the default of tools/deploy.py --onnx.
_base_ = ['./_base_/onnxruntime.py']

codebase_config = dict(
    type='mmdet',
    task='ObjectDetection',
    model_type='end2end',
    post_processing=dict(
        score_threshold=0.05,
        confidence_threshold=0.005,
        iou_threshold=0.5,
        max_output_boxes_per_class=200,
        pre_top_k=5000,
        keep_top_k=100,
        background_label_id=-1))
onnx_config = dict(output_names=['dets', 'labels'], input_shape=None)
