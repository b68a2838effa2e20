# Quantization-aware fine-tuning of the demo detector (./centernet_odbb_fmnist.py) for INT8
# (docs/int8.md): from its trained checkpoint, every quantized conv trains on its fake-quantized
# equivalent kernel (the ODBBs' composed kernels, the neck's convs with their BNs folded in) and
# the activations are fake-quantized where ONNX Runtime quantizes them; ranges calibrated on 8
# training batches, then learned. `tools/deploy.py --int8` then exports the trained scales.
#   python tools/train.py configs/demo/centernet_odbb_fmnist_qat.py
_base_ = ['./centernet_odbb_fmnist.py', '../_base_/settings/qat.py']

quantize = dict(probe_size=128)
load_from = 'work_dirs/demo/detector/epoch_24.pth'
custom_hooks = [_base_.qat_hook]
max_epochs = 4
optim_wrapper = dict(optimizer=dict(lr=1e-4), paramwise_cfg=_base_.qat_paramwise_cfg)
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=max_epochs, by_epoch=True, begin=0, end=max_epochs)
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(checkpoint=dict(interval=max_epochs))
