# The demo search (./odbb_fmnist_cls.py) with quantization-friendly blocks (QARepVGG's changes
# for the seven branches; docs/int8.md). tools/benchmark_int8.py trains both forms alike.
_base_ = './odbb_fmnist_cls.py'

model = dict(backbone=dict(form='quant_friendly'))
