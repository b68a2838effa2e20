"""BNRecalibrationHook: test with BN statistics re-estimated on training
images."""
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from .bn_calibration import recalibrate_on_training_set


@HOOKS.register_module()
class BNRecalibrationHook(Hook):
    """Before testing, re-estimate every BN's statistics on ``num_images``
    training images (``tools/test.py --bn-recalibration N``).

    What a network trained under changing branch masks is worth with
    statistics of its own: the difference to a plain test measures how much
    the statistics the checkpoint carries cost (docs/ablation.md). Runs
    after RepNASHook has applied the architecture to test.
    """
    priority = 'LOW'

    def __init__(self, num_images: int, seed: int = 0):
        if num_images <= 0:
            raise ValueError(f'num_images must be > 0, got {num_images}')
        self.num_images = num_images
        self.seed = seed

    def before_test_epoch(self, runner):
        seen = recalibrate_on_training_set(runner, self.num_images,
                                           self.seed)
        print_log(f'BN statistics re-estimated on {seen} training images '
                  'before testing', logger='current')
