"""A test-only hook: records what the Runner resumed, before training goes on."""
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class ResumeProbeHook(Hook):

    def __init__(self, out):
        self.out = out

    def before_train(self, runner):
        torch.save(
            dict(
                iter=runner.iter,
                epoch=runner.epoch,
                optimizer=runner.optim_wrapper.state_dict()), self.out)
