"""A hook that holds a training once, after its checkpoint of one epoch, so a
test can kill the process that runs it at a known point (tests/test_engines.py).

``marker``: a file; the hook writes it and then sleeps (up to ``seconds``) when it
does not exist yet, and does nothing when it does (the resumed run, or a run that
is not to be held). ``None`` (the default): never hold.
"""
import os.path as osp
import time

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class PauseOnceHook(Hook):
    priority = 'LOWEST'  # after CheckpointHook has saved the epoch

    def __init__(self, marker=None, after_epoch=1, seconds=600):
        self.marker, self.after_epoch, self.seconds = marker, after_epoch, seconds

    def after_train_epoch(self, runner):
        if (self.marker is None or osp.exists(self.marker)
                or runner.epoch + 1 != self.after_epoch):
            return
        with open(self.marker, 'w') as f:
            f.write('held\n')
        time.sleep(self.seconds)
