"""Our safe loader behind every mmengine checkpoint scheme that used pickle.

mmengine's own loaders for local files and for ``http(s)://``,
``torchvision://``, ``open-mmlab://``, ``mmcls://``, ``s3://`` and
``pavi://`` called ``torch.load`` with code execution allowed (downloads
included). :func:`install_loaders` (run when ``repnas_mm`` is imported)
replaces each through mmengine's own extension point,
``CheckpointLoader.register_scheme(force=True)``.
"""
import io
import os
import os.path as osp
from tempfile import TemporaryDirectory

import torch
from mmengine.runner import checkpoint as mm_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

from .loading import load_checkpoint_safely


def load_from_local(filename, map_location=None):
    """Local files (mmengine's default scheme)."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return load_checkpoint_safely(filename, map_location)


def load_from_http(filename, map_location=None, model_dir=None,
                   progress=False):
    """Download once into torch's hub cache (rank 0 first), load safely."""
    from mmengine.dist import get_dist_info
    from torch.hub import download_url_to_file, get_dir
    from urllib.parse import urlparse
    model_dir = model_dir or osp.join(get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    cached = osp.join(model_dir, osp.basename(urlparse(filename).path))
    rank, world_size = get_dist_info()
    if rank == 0 and not osp.exists(cached):
        download_url_to_file(filename, cached, progress=progress)
    if world_size > 1:
        torch.distributed.barrier()
        if not osp.exists(cached):
            download_url_to_file(filename, cached, progress=progress)
    return load_checkpoint_safely(cached, map_location, name=filename)


def load_from_torchvision(filename, map_location=None):
    name = filename.split('://', 1)[1]
    urls = mm_checkpoint.get_torchvision_models()
    return load_from_http(urls[name], map_location=map_location)


def load_from_openmmlab(filename, map_location=None):
    name = filename.split('://', 1)[1]
    name = mm_checkpoint.get_deprecated_model_names().get(name, name)
    url = mm_checkpoint.get_external_models()[name]
    if url.startswith(('http://', 'https://')):
        return load_from_http(url, map_location=map_location)
    return load_from_local(
        osp.join(mm_checkpoint._get_mmengine_home(), url), map_location)


def load_from_mmcls(filename, map_location=None):
    url = mm_checkpoint.get_mmcls_models()[filename[len('mmcls://'):]]
    checkpoint = load_from_http(url, map_location=map_location)
    return mm_checkpoint._process_mmcls_checkpoint(checkpoint)


def load_from_ceph(filename, map_location=None, backend='petrel'):
    from mmengine.fileio import get_file_backend
    file_backend = get_file_backend(
        filename, backend_args={'backend': backend})
    with io.BytesIO(file_backend.get(filename)) as buffer:
        return load_checkpoint_safely(buffer, map_location, name=filename)


def load_from_pavi(filename, map_location=None):
    from pavi import modelcloud
    model = modelcloud.get(filename[len('pavi://'):])
    with TemporaryDirectory() as tmp_dir:
        downloaded = osp.join(tmp_dir, model.name)
        model.download(downloaded)
        return load_checkpoint_safely(downloaded, map_location, name=filename)


SCHEMES = {
    '': load_from_local,
    ('http://', 'https://'): load_from_http,
    ('modelzoo://', 'torchvision://'): load_from_torchvision,
    ('open-mmlab://', 'openmmlab://'): load_from_openmmlab,
    'mmcls://': load_from_mmcls,
    (r'(\S+\:)?s3://', r'(\S+\:)?petrel://'): load_from_ceph,
    'pavi://': load_from_pavi,
}


def install_loaders():
    """Replace mmengine's unsafe loaders by ours (idempotent)."""
    for prefixes, loader in SCHEMES.items():
        prefixes = list(prefixes) if isinstance(prefixes, tuple) else prefixes
        CheckpointLoader.register_scheme(prefixes, loader, force=True)
