"""Reading a config file: the one way every tool and library call does it."""
import ast
import os.path as osp
from typing import Optional

from repnas_mm.errors import UserError


def read_config(path: str, cfg_options: Optional[dict] = None):
    """The mmengine ``Config`` at ``path`` with ``--cfg-options`` merged.

    A missing file, or a Python syntax error in it or in a base it
    inherits, is a :class:`~repnas_mm.errors.UserError` (one line).
    """
    from mmengine.config import Config
    if not osp.isfile(path):
        raise UserError(f'config file not found: {path}')
    try:
        cfg = Config.fromfile(path)
    except SyntaxError as exc:
        raise UserError(_syntax_error(path, exc)) from None
    except FileNotFoundError as exc:
        if f'{PACKAGE_SCOPE}{osp.sep}.mim' not in str(exc.filename):
            raise
        raise UserError(
            f'{path} inherits {PACKAGE_SCOPE}::, which mmengine reads from '
            f'an installed package ({exc.filename} is missing): an '
            'editable install keeps the package in its checkout, where '
            'mmengine does not look; install it with `pip install .`, or '
            'give the base as a path') from None
    for key in list(cfg.keys()):
        _drop_package_scope(cfg[key])
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if isinstance(cfg.get('model'), dict):
        follow_backbone_widths(cfg.model)
    return cfg


#: The parts of a model that read its backbone's outputs, in order.
READERS = ('neck', 'head', 'bbox_head')


def follow_backbone_widths(model: dict) -> None:
    """A narrow ODBBNet backbone (``widths=``) and what reads it (in
    place): the first of the neck, head or bbox head whose ``in_channels``
    are the arch's full output channels reads the narrow ones instead
    (an int for one output, as CenterNet's neck and a linear head take
    it; a list for several). Anything else is left as written."""
    backbone = model.get('backbone') or {}
    if backbone.get('type') != 'ODBBNet' or not backbone.get('widths'):
        return
    import inspect

    from repnas_mm.models import ODBBNet
    defaults = inspect.signature(ODBBNet).parameters
    arch = backbone.get('arch', defaults['arch'].default)
    arch = ODBBNet.arch_settings.get(arch) if isinstance(arch, str) \
        else arch
    if not arch or len(backbone['widths']) != len(
            ODBBNet.arch_widths(arch)):
        return  # ODBBNet itself says what is wrong when it is built
    out_indices = backbone.get('out_indices',
                               defaults['out_indices'].default)
    full = ODBBNet.outputs_of(arch, ODBBNet.arch_widths(arch), out_indices)
    narrow = ODBBNet.outputs_of(arch, backbone['widths'], out_indices)
    for part in READERS:
        reader = model.get(part) or {}
        if 'in_channels' not in reader:
            continue
        channels = reader['in_channels']
        if channels == full or (len(full) == 1 and channels == full[0]):
            reader['in_channels'] = narrow if isinstance(
                channels, (list, tuple)) else narrow[0]
        return


#: What a user's config writes to inherit one of ours:
#: ``_base_ = 'repnas_mm::odbb_a0_imagenet.py'`` (mmengine reads it from
#: ``repnas_mm/.mim/configs``; :func:`register_package_scope`).
PACKAGE_SCOPE = 'repnas_mm'


def register_package_scope() -> None:
    """Let mmengine resolve ``repnas_mm::`` bases, as it does ``mmdet::``:
    mmengine 0.10 accepts only the packages of its ``MODULE2PACKAGE`` table
    ("mmengine does not support to load repnas_mm config" otherwise)."""
    from mmengine.config.utils import MODULE2PACKAGE
    MODULE2PACKAGE.setdefault(PACKAGE_SCOPE, 'repnas_mm')


def _drop_package_scope(node) -> None:
    """mmengine marks every typed dict of a ``repnas_mm::`` base with
    ``_scope_='repnas_mm'``, a scope no registry has (our modules live in
    mmpretrain's and mmdet's); without the mark the config's own
    ``default_scope`` builds them, as if the base were a local file."""
    if isinstance(node, dict):
        if node.get('_scope_') == PACKAGE_SCOPE:
            node.pop('_scope_')
        for value in node.values():
            _drop_package_scope(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _drop_package_scope(value)


def _syntax_error(path: str, exc: SyntaxError) -> str:
    """One line naming the file (the config or a base it inherits) and the
    line of a syntax error; mmengine's own error names neither."""
    found = _first_syntax_error(path)
    where, error = found if found else (path, exc)
    line = f', line {error.lineno}' if error.lineno else ''
    return f'syntax error in config {where}{line}: {error.msg}'


def _first_syntax_error(path: str, depth: int = 0):
    """``(file, SyntaxError)`` for the first file of ``path`` and its local
    ``_base_`` chain that Python cannot parse, or None."""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as exc:
        return path, exc
    for node in tree.body if depth < 16 else ():
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == '_base_'
                for t in node.targets):
            try:
                bases = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError):
                continue  # not a literal: mmengine's message stands
            for base in [bases] if isinstance(bases, str) else bases:
                if not isinstance(base, str) or '::' in base:
                    continue  # a package's base parses
                full = osp.join(osp.dirname(path), base)
                if osp.isfile(full):
                    found = _first_syntax_error(full, depth + 1)
                    if found:
                        return found
    return None


#: Config builders that convert a stock backbone (``backbone=``) in place.
CONVERTING_BUILDERS = ('ODBBConverted', 'RefConvConverted')


def unwrap_converted(node, types=CONVERTING_BUILDERS, **overrides) -> None:
    """Replace, in place, every dict of ``node`` (a config tree) whose
    ``type`` is one of ``types`` by its ``backbone`` updated with
    ``overrides``: the stock backbone that the builder converts."""
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for key, value in list(items):
        while isinstance(value, dict) and value.get('type') in types:
            value = node[key] = dict(value['backbone'], **overrides)
        unwrap_converted(value, types, **overrides)
