"""Verification on real images: the fused model must compute what the
training-time one computes (classifier logits, detector raw head outputs)."""
import glob
import os.path as osp
from typing import List, Optional, Sequence

import torch

from repnas_mm.rep.outputs import output_tensors

from .model import DeployError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def image_files(images: Sequence[str]) -> List[str]:
    """Files named, or found in the folders named."""
    files = []
    for item in images:
        if osp.isdir(item):
            files += sorted(
                f for f in glob.glob(osp.join(item, '**', '*'),
                                     recursive=True)
                if f.lower().endswith(IMAGE_EXTENSIONS))
        elif osp.isfile(item):
            files.append(item)
        else:
            raise DeployError(f'no such image or folder: {item}')
    if not files:
        raise DeployError(f'no image found in {list(images)}')
    return files


def check_image(path: str):
    """A :class:`DeployError` unless ``path`` decodes as an image (what
    the test pipeline's ``LoadImageFromFile`` would assert deep inside)."""
    import mmcv
    with open(path, 'rb') as f:
        if mmcv.imfrombytes(f.read()) is None:
            raise DeployError(f'not an image (it does not decode): {path}')


def _test_pipeline(cfg):
    from mmengine.dataset import Compose
    pipeline = cfg.test_dataloader.dataset.get('pipeline')
    if pipeline is None:
        raise DeployError(f'{cfg.filename} has no test pipeline')
    # Images given on the command line have no annotations.
    return Compose([t for t in pipeline if t['type'] != 'LoadAnnotations'])


def collect_batches(cfg, images: Optional[Sequence[str]] = None,
                    num_images: int = 8) -> list:
    """Batches of real images through the config's test pipeline.

    From ``images`` (files or folders) if given, else from the config's test
    data set; an absent data set is a :class:`DeployError` asking for
    ``--images``.
    """
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    if images:
        pipeline = _test_pipeline(cfg)
        files = image_files(images)[:num_images]
        for path in files:
            check_image(path)
        samples = [
            pipeline(dict(img_path=f, img_id=i, sample_idx=i))
            for i, f in enumerate(files)
        ]
        return [pseudo_collate([s]) for s in samples]
    from mmengine.runner import Runner
    loader_cfg = cfg.test_dataloader.copy()
    loader_cfg.update(batch_size=1, num_workers=0, persistent_workers=False)
    try:
        loader = Runner.build_dataloader(loader_cfg)
    except (FileNotFoundError, OSError) as exc:
        raise DeployError(
            'no images to verify on: the config\'s test data is absent '
            f'({exc}); pass --images FILE_OR_DIR') from None
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) >= num_images:
            break
    if not batches:
        raise DeployError('the config\'s test data set is empty; pass '
                          '--images FILE_OR_DIR')
    return batches


def flatten(outputs) -> List[torch.Tensor]:
    """:func:`~repnas_mm.rep.outputs.output_tensors`, as a DeployError."""
    try:
        return output_tensors(outputs)
    except TypeError as exc:
        raise DeployError(f'cannot compare the outputs: {exc}') from None


def model_inputs(model, batch) -> torch.Tensor:
    """The preprocessed image tensor the network itself sees."""
    return model.data_preprocessor(batch, False)['inputs']


@torch.no_grad()
def raw_outputs(model, inputs) -> List[torch.Tensor]:
    """Classifier logits / detector head maps (``mode='tensor'``)."""
    return flatten(model(inputs, mode='tensor'))


def relative_error(got: Sequence[torch.Tensor],
                   ref: Sequence[torch.Tensor]) -> float:
    """max over outputs of max|got - ref| / max|ref|."""
    if len(got) != len(ref):
        raise DeployError(f'{len(got)} outputs against {len(ref)}')
    worst = 0.0
    for g, r in zip(got, ref):
        g = torch.as_tensor(g, dtype=torch.float32)
        r = torch.as_tensor(r, dtype=torch.float32)
        if g.shape != r.shape:
            raise DeployError(f'output shapes differ: {tuple(g.shape)} vs '
                              f'{tuple(r.shape)}')
        worst = max(worst, ((g - r).abs().max() /
                            r.abs().max().clamp_min(1e-12)).item())
    return worst
