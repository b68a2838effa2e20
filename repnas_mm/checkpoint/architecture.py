"""The one reader of the architecture a checkpoint carries.

A RepNAS run (``RepNASHook``) saves its searched architecture under
``checkpoint['repnas']['architecture']`` (the format of
:mod:`repnas_mm.rep.arch`); a DyRep run (``DyRepHook``) its structure, the
kept branches per block name, under ``checkpoint['dyrep']['structure']``.
:func:`recorded_architecture` reads either into the architecture format;
everything that needs the branches a run kept goes through it.
"""
from typing import Dict, Optional


def recorded_architecture(checkpoint: dict) -> Optional[dict]:
    """The architecture (``{'blocks': [{'name', 'branches'}, ...], ...}``)
    a RepNAS or DyRep checkpoint carries, or None."""
    if not isinstance(checkpoint, dict):
        return None
    arch = (checkpoint.get('repnas') or {}).get('architecture')
    if arch is not None:
        return arch
    structure = (checkpoint.get('dyrep') or {}).get('structure')
    if structure is not None:
        return dict(blocks=[dict(name=name, branches=list(branches))
                            for name, branches in dict(structure).items()])
    return None


def kept_branches(checkpoint: dict) -> Optional[Dict[str, list]]:
    """{block name: kept branches} a RepNAS or DyRep checkpoint carries, or
    None."""
    arch = recorded_architecture(checkpoint)
    if arch is None:
        return None
    return {b['name']: list(b['branches']) for b in arch['blocks']}


def architecture_in_checkpoint(filename) -> dict:
    """The architecture a RepNAS or DyRep checkpoint file carries (plain
    data, for ``ODBBNet(branches='run.pth')``).

    Raises ``ValueError`` naming the file when it carries none (it was not
    written by a run with ``RepNASHook`` or ``DyRepHook``).
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    arch = recorded_architecture(CheckpointLoader.load_checkpoint(
        str(filename), map_location='cpu', logger='current'))
    if arch is None:
        raise ValueError(f'{filename} carries no searched architecture (it '
                         'was not written by a RepNASHook or DyRepHook run); '
                         'pass its searched_arch.json instead')
    return arch
