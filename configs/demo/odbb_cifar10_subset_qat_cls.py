# Quantization-aware fine-tuning of the searched CIFAR-10-subset classifier
# (./odbb_cifar10_subset_cls.py) for INT8 (docs/int8.md): the searched architecture and weights
# come from its checkpoint (no search here); each ODBB trains on its fake-quantized composed
# kernel. `tools/deploy.py --int8` then exports the trained scales.
#   python tools/train.py configs/demo/odbb_cifar10_subset_qat_cls.py \
#       --cfg-options load_from=work_dirs/odbb_cifar10_subset_cls/epoch_26.pth
_base_ = ['./odbb_cifar10_subset_cls.py', '../_base_/settings/qat.py']

quantize = dict(probe_size=32)
load_from = 'work_dirs/odbb_cifar10_subset_cls/epoch_26.pth'
custom_hooks = [_base_.qat_hook]
max_epochs = 3
optim_wrapper = _base_.qat_sgd_optim_wrapper
param_scheduler = dict(T_max=max_epochs, begin=0, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
