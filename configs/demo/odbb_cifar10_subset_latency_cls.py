# The CIFAR-10-subset search (./odbb_cifar10_subset_cls.py) searching every layer's width too,
# under half the full-width network's predicted ONNX Runtime (CPU) latency at 224 px
# (docs/widths.md):
#   python tools/latency_table.py configs/demo/odbb_cifar10_subset_latency_cls.py
#   python tools/train.py configs/demo/odbb_cifar10_subset_latency_cls.py
_base_ = './odbb_cifar10_subset_cls.py'

latency_widths = dict(
    table='work_dirs/latency/odbb_cifar10_subset_ort_cpu_224.json', input_size=224,
    budget_ratio=0.5)
custom_hooks = [dict(_base_.custom_hooks[0], widths=latency_widths)]
