"""Any OpenMMLab backbone with ODBBs in place of its KxK Conv+BN pairs."""
import torch

from repnas_mm.registry import MODEL_REGISTRIES
from repnas_mm.rep.convert import convert_to_odbb
from repnas_mm.rep.forms import resolve_form


def build_converted(backbone: dict,
                    branches='dbb',
                    weight_sharing: bool = False,
                    online: bool = False,
                    quant_friendly: bool = False,
                    input_size: int = 64,
                    *,
                    form: str = 'standard'):
    """Build ``backbone`` from the registry and convert it (config builder).

    ``dict(type='ODBBConverted', backbone=dict(type='ResNet', depth=18))``
    gives that ResNet itself, its KxK convs now ODBBs computing exactly what
    they did (only ``kxk`` active; DyRep grows the others). The module tree
    and key prefixes stay the backbone's own, so its pretrained weights load
    first (``init_cfg`` is applied before the conversion) and the fused model
    loads into the stock backbone with ``strict=True``. ``form`` is the
    blocks' form (``online`` and ``quant_friendly``: its deprecated
    aliases).
    """
    form = resolve_form(form, online, quant_friendly, 'ODBBConverted')
    from mmengine.registry import MODELS, DefaultScope
    backbone = dict(backbone)
    if DefaultScope.get_current_instance() is None:  # outside a Runner
        backbone.setdefault('_scope_', 'mmpretrain')
    model = MODELS.build(backbone)
    # The stock initialisation (or pretrained weights) into the stock layout
    # first; the conversion copies them. mmengine then skips this backbone
    # when the Runner initialises the model (it is marked initialised).
    if hasattr(model, 'init_weights'):
        with quiet_console():  # mmengine prints its per-tensor init table
            model.init_weights()
    in_channels = backbone.get('in_channels', 3)
    convert_to_odbb(
        model,
        torch.zeros(1, in_channels, input_size, input_size),
        branches=branches,
        weight_sharing=weight_sharing,
        form=form)
    return model


for _registry in MODEL_REGISTRIES:
    _registry.register_module(name='ODBBConverted', module=build_converted)


class quiet_console:
    """Raise the console handlers of mmengine's logger to WARNING (a Runner's
    log file still gets everything)."""

    def __enter__(self):
        import logging

        from mmengine.logging import MMLogger
        logger = MMLogger.get_current_instance()
        self._saved = [(h, h.level) for h in logger.handlers
                       if type(h) is logging.StreamHandler]
        for handler, _ in self._saved:
            handler.setLevel(logging.WARNING)

    def __exit__(self, *exc):
        for handler, level in self._saved:
            handler.setLevel(level)
