# The tiny search with a hook that can hold its training once (tests/pause.py): the Ray
# kill-and-retry test sets custom_hooks.1.marker; every other run is not held.
_base_ = './odbb_cls_cifar10_tiny.py'

custom_imports = dict(imports=['repnas_mm', 'tests.pause'], allow_failed_imports=False)
custom_hooks = [_base_.custom_hooks[0], dict(type='PauseOnceHook')]
