"""The runner that builds a quantization-aware model, and the hook that
calibrates it."""
from itertools import islice

from mmengine.dist import all_reduce
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS, RUNNERS
from mmengine.runner import Runner

from repnas_mm.errors import UserError
from repnas_mm.rep.quant import act_quantizers, calibrate, quantized_layers
from .model import QUANTIZE_KEY, prepare_from_config


@RUNNERS.register_module()
class QuantAwareRunner(Runner):
    """mmengine's Runner, whose model is made quantization-aware (the
    config's ``quantize``) when it is built: before the optimizer, the
    checkpoint loading and the distributed wrapper, which all see the
    quantizers. Chosen by ``runner_type = 'QuantAwareRunner'`` (mmdet's and
    mmpretrain's own ``tools/train.py`` honour it too)."""

    def build_model(self, model):
        return prepare_from_config(super().build_model(model), self.cfg)


@HOOKS.register_module()
class QATHook(Hook):
    """Before training, set every activation range that is not set yet to
    the min/max of ``calib_batches`` training batches (all ranks
    together); a resumed run (ranges saved with the weights) skips it."""

    priority = 'VERY_HIGH'

    def __init__(self, calib_batches: int = 8):
        if calib_batches <= 0:
            raise ValueError(f'calib_batches must be > 0, got {calib_batches}')
        self.calib_batches = calib_batches

    def before_train(self, runner):
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        quantizers = act_quantizers(model)
        if not quantizers:
            raise UserError(
                'QATHook: the model is not quantization-aware; the config '
                f"needs `{QUANTIZE_KEY} = dict(...)` and runner_type = "
                "'QuantAwareRunner'")
        layers = len(quantized_layers(model))
        if all(bool(q.calibrated) for q in quantizers):
            print_log(f'QAT: {layers} quantized layers, activation ranges '
                      'from the checkpoint', logger='current')
            return

        def run(net, batch):
            data = net.data_preprocessor(batch, False)
            net(data['inputs'], data.get('data_samples'), mode='tensor')

        seen = calibrate(model, islice(runner.train_dataloader,
                                       self.calib_batches), run)
        for q in quantizers:
            all_reduce(q.lo.data, 'min')
            all_reduce(q.hi.data, 'max')
        print_log(f'QAT: {layers} quantized layers, {len(quantizers)} '
                  f'activation ranges calibrated on {seen} training '
                  'batches (min/max), then learned', logger='current')
