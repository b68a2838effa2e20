#!/usr/bin/env python
"""Write the demo's data set from Debian's Fashion-MNIST (real photos, MIT).

Reads the IDX files of the ``dataset-fashion-mnist`` package and writes a
seeded, class-balanced subset as one folder per class (PNG), the layout of
mmpretrain's ``CustomDataset``::

    OUT/train/<class>/<index>.png    (from the 60k training images)
    OUT/val/<class>/<index>.png      (from the 10k test images)

The folder is written next to OUT and renamed into place when complete, so
an interrupted run leaves nothing half-written; a finished OUT with the same
settings is reused as is.

    python tools/prepare_demo_data.py --out data/demo/fmnist --train-per-class 200
"""
import argparse
import gzip
import json
import os
import os.path as osp
import shutil
import struct
import sys

import numpy as np

DEFAULT_SOURCE = '/usr/share/datasets/fashion-mnist'
CLASSES = ('T-shirt_top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
           'Shirt', 'Sneaker', 'Bag', 'Ankle_boot')
FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'val': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
INSTALL_HINT = ('Fashion-MNIST not found at {path}. Install Debian\'s package '
                '(as root): apt-get install dataset-fashion-mnist, or pass '
                '--source DIR with the four *-ubyte.gz files.')


def read_idx(path):
    """An IDX file (the MNIST format) as a numpy array."""
    with gzip.open(path, 'rb') as f:
        data = f.read()
    magic, = struct.unpack('>I', data[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:  # unsigned bytes
        raise ValueError(f'{path}: not an unsigned-byte IDX file')
    shape = struct.unpack(f'>{ndim}I', data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(source, split):
    images, labels = (osp.join(source, name) for name in FILES[split])
    for path in (images, labels):
        if not osp.isfile(path):
            raise FileNotFoundError(INSTALL_HINT.format(path=path))
    return read_idx(images), read_idx(labels)


def balanced_indices(labels, per_class, rng):
    """``per_class`` random indices of every class, sorted."""
    picked = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(labels == c)
        if per_class > len(idx):
            raise ValueError(f'only {len(idx)} images of class {c}')
        picked.append(rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(picked))


def write_classification(source, out, train_per_class, val_per_class, seed):
    """Write the class-per-folder subset; return the number of images."""
    import cv2
    from tqdm import tqdm
    settings = dict(
        source=osp.abspath(source),
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        seed=seed)
    manifest = osp.join(out, 'manifest.json')
    if osp.isfile(manifest):
        with open(manifest) as f:
            if json.load(f).get('settings') == settings:
                print(f'[data] {out} is up to date')
                return None
    rng = np.random.default_rng(seed)
    tmp = out.rstrip('/') + '.part'
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {}
    for split, per_class in (('train', train_per_class), ('val',
                                                          val_per_class)):
        images, labels = load_split(source, split)
        chosen = balanced_indices(labels, per_class, rng)
        for name in CLASSES:
            os.makedirs(osp.join(tmp, split, name))
        for i in tqdm(chosen, desc=f'[data] {split}', unit='img'):
            path = osp.join(tmp, split, CLASSES[labels[i]], f'{i:05d}.png')
            if not cv2.imwrite(path, images[i]):
                raise OSError(f'could not write {path}')
        counts[split] = len(chosen)
    with open(osp.join(tmp, 'manifest.json'), 'w') as f:
        json.dump(dict(settings=settings, counts=counts, classes=CLASSES), f,
                  indent=2)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    os.replace(tmp, out)
    print(f'[data] wrote {counts} images to {out}')
    return counts


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--source', default=DEFAULT_SOURCE)
    parser.add_argument('--out', default='data/demo/fmnist')
    parser.add_argument('--train-per-class', type=int, default=200)
    parser.add_argument('--val-per-class', type=int, default=50)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        write_classification(args.source, args.out, args.train_per_class,
                             args.val_per_class, args.seed)
    except FileNotFoundError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
