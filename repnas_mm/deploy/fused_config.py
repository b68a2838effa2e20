"""The config that builds the fused model directly (``<config>_deploy.py``)."""
import copy

from repnas_mm.config import follow_backbone_widths, unwrap_converted
from repnas_mm.rep import named_odbbs


def deploy_config(cfg, model):
    """A copy of ``cfg`` that builds the fused model directly.

    Every ODBBNet is built with ``deploy=True`` and the branches the model
    kept (so the file records the searched architecture); an
    ``ODBBConverted`` or ``RefConvConverted`` backbone becomes its stock
    backbone; training-only parts (search and QAT hooks, a QAT config's
    quantization, optimizer constructor, initialisation) are dropped.
    """
    out = copy.deepcopy(cfg)
    kept = iter([b.branch_names for b in named_odbbs(model).values()])
    narrow = _narrow_widths(model)

    def visit(node):
        if isinstance(node, dict):
            if node.get('type') == 'ODBBNet':
                node['deploy'] = True
                node['init_cfg'] = None
                node['branches'] = [
                    list(next(kept)) for _ in range(_num_blocks(node))
                ]
                node.pop('channels', None)
                if narrow is not None:
                    node['widths'] = narrow
            for value in node.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    # Fused, a converted backbone is the stock one again.
    unwrap_converted(out.model, init_cfg=None)
    visit(out.model)
    follow_backbone_widths(out.model)  # what reads it follows its widths
    out.custom_hooks = [
        h for h in out.get('custom_hooks', [])
        if h.get('type') not in ('RepNASHook', 'DyRepHook', 'QATHook')
    ]
    # The fused model is the fp32 one; a QAT run's scales are in its INT8
    # model.
    if out.get('runner_type') == 'QuantAwareRunner':
        out.pop('runner_type')
    out.pop('quantize', None)
    if 'optim_wrapper' in out:
        out.optim_wrapper.pop('constructor', None)
        out.optim_wrapper.pop('alpha_optimizer', None)
    out.load_from = None
    out.resume = False
    return out


def _narrow_widths(model):
    """The widths of a narrow (width-searched) ODBBNet backbone, or None."""
    from repnas_mm.models import ODBBNet
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, ODBBNet):
        return None
    full = ODBBNet.arch_widths(backbone.arch)
    return None if backbone.widths == full else list(backbone.widths)


def _num_blocks(backbone_cfg) -> int:
    from repnas_mm.models import ODBBNet
    arch = backbone_cfg['arch']
    arch = ODBBNet.arch_settings[arch] if isinstance(arch, str) else arch
    return 1 + sum(arch['num_blocks'])
