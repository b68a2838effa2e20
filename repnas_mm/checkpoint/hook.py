"""SafeCheckpointHook: every checkpoint a run writes is plain data."""
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from .encoding import encode_plain


@HOOKS.register_module()
class SafeCheckpointHook(Hook):
    """Write checkpoints as plain data (see the module docstring).

    Runs last among ``before_save_checkpoint`` hooks so that whatever other
    hooks add is encoded too.
    """
    priority = 'LOWEST'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in list(checkpoint):
            checkpoint[key] = encode_plain(checkpoint[key])
