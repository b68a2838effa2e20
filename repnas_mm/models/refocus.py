"""Any OpenMMLab backbone with RefConvs in place of its KxK convs."""
import torch

from repnas_mm.registry import MODEL_REGISTRIES
from repnas_mm.rep import named_odbbs
from repnas_mm.rep.refocus import convert_to_refconv

from .converted import quiet_console


def build_refconv_converted(backbone: dict,
                            map_kernel_size: int = 3,
                            input_size: int = 64):
    """Build ``backbone`` from the registry and refocus it (config builder).

    ``dict(type='RefConvConverted', backbone=dict(type='ResNet_CIFAR',
    depth=18))`` gives that ResNet itself with every plain KxK conv a
    :class:`~repnas_mm.rep.RefConv` starting from its kernel: the stock
    kernels are frozen, the refocusing transforms (zero at the start), BNs
    and biases train. Key names stay the backbone's own (a RefConv keeps
    its kernel as ``weight``), so ``load_from`` a checkpoint of the stock
    model fine-tunes it, and the fused model loads into the stock backbone
    with ``strict=True``. An ODBBNet must be built fused (``deploy=True``):
    refocusing the branches of a multi-branch block is not what RefConv is.
    """
    from mmengine.registry import MODELS, DefaultScope
    backbone = dict(backbone)
    if DefaultScope.get_current_instance() is None:  # outside a Runner
        backbone.setdefault('_scope_', 'mmpretrain')
    model = MODELS.build(backbone)
    if named_odbbs(model, fused=False):
        raise ValueError(
            f'RefConvConverted takes a fused network: build '
            f'{backbone["type"]} with deploy=True (its multi-branch ODBBs '
            'are trained by structural re-parameterization, not refocused)')
    if hasattr(model, 'init_weights'):  # init_cfg into the stock layout
        with quiet_console():
            model.init_weights()
    in_channels = backbone.get('in_channels', 3)
    names = convert_to_refconv(
        model, torch.zeros(1, in_channels, input_size, input_size),
        map_kernel_size)
    if not names:
        raise ValueError(f'{backbone["type"]} has no plain KxK conv to '
                         'refocus')
    return model


for _registry in MODEL_REGISTRIES:
    _registry.register_module(name='RefConvConverted',
                              module=build_refconv_converted)
