"""The ODBB forms by name: the one selector every builder goes through.

``form='standard'`` (:class:`~.block.ODBB`), ``'online'``
(:class:`~.online.OnlineODBB`) or ``'quant_friendly'``
(:class:`~.block.QuantFriendlyODBB`). ODBBNet, ODBBLayer, convert_to_odbb
and the ``ODBBConverted`` builder take ``form=``; their old booleans
``online=True`` / ``quant_friendly=True`` are deprecated aliases
(:func:`resolve_form`). A state dict says which form its blocks are of
(:func:`forms_in_state`).
"""
import warnings
from typing import Dict, Set, Type

from torch import Tensor

from .block import FORM_NAMES, ODBB, QuantFriendlyODBB
from .online import OnlineODBB

#: Block class of every form.
FORMS: Dict[str, Type[ODBB]] = {
    cls.form: cls
    for cls in (ODBB, OnlineODBB, QuantFriendlyODBB)
}
assert tuple(FORMS) == FORM_NAMES


def odbb_class(form: str) -> Type[ODBB]:
    """The block class of ``form``; ``ValueError`` naming the forms."""
    if form not in FORMS:
        raise ValueError(f'unknown ODBB form {form!r}; choose from '
                         f'{", ".join(FORMS)}')
    return FORMS[form]


def build_odbb(*args, form: str = 'standard', **kwargs) -> ODBB:
    """An ODBB of ``form``; the other arguments are :class:`ODBB`'s."""
    return odbb_class(form)(*args, **kwargs)


def resolve_form(form: str = 'standard',
                 online: bool = False,
                 quant_friendly: bool = False,
                 where: str = 'ODBBNet') -> str:
    """``form``, or the form the deprecated booleans name (with a
    ``DeprecationWarning``); ``ValueError`` when they disagree."""
    odbb_class(form)
    flags = [name for name, on in (('online', online),
                                   ('quant_friendly', quant_friendly)) if on]
    if not flags:
        return form
    if len(flags) > 1:
        raise ValueError(f'{where}: online=True and quant_friendly=True do '
                         "not combine; pass one form= ('standard', "
                         "'online' or 'quant_friendly')")
    named = flags[0]
    if form not in ('standard', named):
        raise ValueError(f"{where}: form='{form}' and {named}=True disagree")
    warnings.warn(
        f"{where}({named}=True) is deprecated: use form='{named}'",
        DeprecationWarning, stacklevel=3)
    return named


def forms_in_state(state: Dict[str, Tensor]) -> Set[str]:
    """The forms of the ODBBs a (multi-branch) state dict holds.

    Read from the blocks' saved ``branch_form``; checkpoints from before it
    was saved are recognised by their keys (online blocks have per-branch
    ``scale`` tensors; quantization-friendly ones, a BN after the sum,
    ``<block>.bn``, and no online scales). Empty for a state dict without
    multi-branch ODBBs (a fused one, or another model's).
    """
    suffix = '.' + ODBB.FORM
    recorded = {FORM_NAMES[int(v)] for k, v in state.items()
                if k.endswith(suffix) and 0 <= int(v) < len(FORM_NAMES)}
    if recorded:
        return recorded
    mask = '.' + ODBB.MASK
    blocks = {k[:-len(mask)] for k in state if k.endswith(mask)}
    if not blocks:  # before the branch mask too: any branch tensor
        blocks = {k.split('.branches.')[0] for k in state
                  if '.branches.' in k}
    forms = set()
    for block in blocks:
        if any(k.startswith(block + '.branches.') and k.endswith('.scale')
               for k in state):
            forms.add('online')
        elif block + '.bn.weight' in state:
            forms.add('quant_friendly')
        else:
            forms.add('standard')
    return forms


__all__ = ['FORMS', 'build_odbb', 'forms_in_state', 'odbb_class',
           'resolve_form']
