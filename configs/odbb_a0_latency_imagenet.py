# The RepNAS search of ODBB-A0 on ImageNet-1k (./odbb_a0_imagenet.py) searching every layer's
# width too, under half of RepVGG-A0's fused latency: the full-width network is RepVGG-A0 fused,
# so budget_ratio=0.5 is half its predicted ONNX Runtime (CPU, batch 1) latency at 224 px, from a
# table measured on the machine it will ship on (docs/widths.md):
#   python tools/latency_table.py configs/odbb_a0_latency_imagenet.py [--threads N]
#   python tools/train.py configs/odbb_a0_latency_imagenet.py
_base_ = './odbb_a0_imagenet.py'

latency_widths = dict(table='work_dirs/latency/a0_ort_cpu_224.json', input_size=224,
                      budget_ratio=0.5)
custom_hooks = [dict(_base_.custom_hooks[0], widths=latency_widths)]
