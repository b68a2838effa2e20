# The search on all of Fashion-MNIST (./odbb_fmnist_full_cls.py) searching every layer's width
# too, under half the full-width network's predicted ONNX Runtime (CPU) latency at 224 px
# (docs/widths.md; the width study, tools/benchmark_widths.py, sets its own budgets):
#   python tools/latency_table.py configs/demo/odbb_fmnist_full_latency_cls.py --calibrate
#   python tools/train.py configs/demo/odbb_fmnist_full_latency_cls.py
_base_ = './odbb_fmnist_full_cls.py'

latency_widths = dict(
    table='work_dirs/latency/odbb_fmnist_ort_cpu_224.json', input_size=224, budget_ratio=0.5)
custom_hooks = [dict(_base_.custom_hooks[0], widths=latency_widths)]
