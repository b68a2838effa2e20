# The demo's search (./odbb_fmnist_cls.py) searching every layer's width too, under a measured
# latency budget: half the full-width network's predicted ONNX Runtime (CPU) latency at 224 px,
# the size the table is measured at (at the demo's 32 px the runtime's fixed overhead would
# dominate). Measure the table once, then train and deploy as usual (docs/widths.md):
#   python tools/latency_table.py configs/demo/odbb_fmnist_latency_cls.py
#   python tools/train.py configs/demo/odbb_fmnist_latency_cls.py
#   python tools/deploy.py configs/demo/odbb_fmnist_latency_cls.py CKPT --work-dir DIR --onnx
_base_ = './odbb_fmnist_cls.py'

latency_widths = dict(
    table='work_dirs/latency/odbb_fmnist_ort_cpu_224.json', input_size=224, budget_ratio=0.5)
custom_hooks = [dict(_base_.custom_hooks[0], widths=latency_widths)]
