# Quantization-aware training (docs/int8.md): inherit this beside a trained model's config,
#   _base_ = ['./model_config.py', '<path to>/_base_/settings/qat.py']
#   load_from = 'the trained fp32 checkpoint'
#   custom_hooks = [_base_.qat_hook]
# and give the optimizer `paramwise_cfg=_base_.qat_paramwise_cfg` (or take
# `optim_wrapper = _base_.qat_sgd_optim_wrapper`). The runner builds the model
# quantization-aware (every quantized conv on its fake-quantized equivalent kernel, activations
# fake-quantized where ONNX Runtime quantizes them); QATHook calibrates the activation ranges on
# a few training batches before the first step, then they are learned.
runner_type = 'QuantAwareRunner'
# probe_size: the side of the zero image one probing pass places the quantizers with.
quantize = dict(probe_size=64)
qat_hook = dict(type='QATHook', calib_batches=8)
# The quantizers' ranges are not weights: no weight decay on them.
qat_paramwise_cfg = dict(custom_keys=dict(act_in=dict(decay_mult=0.0), act_out=dict(decay_mult=0.0)))
# A fine-tune's SGD (replacing a search config's optimizer wrapper, alpha's Adam included).
qat_sgd_optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.002, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=qat_paramwise_cfg)
