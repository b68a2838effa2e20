"""The demo's data sets, from Debian's Fashion-MNIST (real photos, MIT) and
the CIFAR-10 subset the package ships (layer 3; ``tools/prepare_demo_data.py``
is its command line, ``tools/demo.py`` and the tests call it).

:func:`write_classification` reads the IDX files of the
``dataset-fashion-mnist`` package and writes a seeded, class-balanced subset
as one folder per class (PNG), the layout of mmpretrain's ``CustomDataset``::

    OUT/train/<class>/<index>.png    (from the 60k training images)
    OUT/val/<class>/<index>.png      (from the 10k test images)
    OUT/test/<class>/<index>.png     (10k test images not in val: the
                                      held-out split final numbers use)

:func:`write_detection` writes a detection set in COCO format for mmdet's
``CocoDataset``: several real items pasted on larger black canvases (scaled
1-1.6x, never overlapping), each box the tight box of the pasted item, 10
categories::

    DET_OUT/{train,val,test}/<id>.png, DET_OUT/instances_*.json
    (test pastes only items that no val image shows)

:func:`write_cifar10_subset` unpacks ``datasets/cifar10_subset.tar.gz``
(:func:`repnas_mm.resources.dataset_path`) as DIR/{train,val,test}/<class>/
(2,700 / 600 / 300 real images; datasets/README.md).

Each folder is written next to its final place and renamed into place when
complete, so an interrupted run leaves nothing half-written; a finished one
with the same settings is reused as is.
"""
import gzip
import json
import os
import os.path as osp
import shutil
import struct

import numpy as np

DEFAULT_SOURCE = '/usr/share/datasets/fashion-mnist'
#: The CIFAR-10 subset the package ships (``datasets/`` of a checkout).
CIFAR10_ARCHIVE = 'cifar10_subset.tar.gz'
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


def balanced_indices(labels, per_class, rng, exclude=()):
    """``per_class`` random indices of every class, sorted, none of them in
    ``exclude``."""
    picked = []
    for c in range(len(CLASSES)):
        idx = np.setdiff1d(np.flatnonzero(labels == c), exclude)
        if per_class > len(idx):
            raise ValueError(f'only {len(idx)} images of class {c}')
        picked.append(rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(picked))


def write_classification(source, out, train_per_class, val_per_class, seed,
                         test_per_class=0):
    """Write the class-per-folder subset; return the number of images.

    ``test`` (``test_per_class`` > 0) comes from the 10k test images too,
    none of them a ``val`` image: the held-out split that final numbers
    are reported on (choices are made on ``val``). ``train`` and ``val``
    are drawn first, so they do not depend on ``test_per_class``.
    """
    import cv2
    from tqdm import tqdm
    settings = dict(
        source=osp.abspath(source),
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        test_per_class=test_per_class,
        seed=seed)
    if _up_to_date(out, settings):
        return None
    rng = np.random.default_rng(seed)
    tmp = out.rstrip('/') + '.part'
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {}
    splits = [('train', train_per_class), ('val', val_per_class)]
    splits += [('test', test_per_class)] if test_per_class else []
    val_chosen = ()
    for split, per_class in splits:
        images, labels = load_split(source, 'train' if split == 'train'
                                    else 'val')
        chosen = balanced_indices(labels, per_class, rng, exclude=val_chosen)
        if split == 'val':
            val_chosen = chosen
        for name in CLASSES:
            os.makedirs(osp.join(tmp, split, name))
        for i in tqdm(chosen, desc=f'[data] {split}', unit='img'):
            path = osp.join(tmp, split, CLASSES[labels[i]], f'{i:05d}.png')
            if not cv2.imwrite(path, images[i]):
                raise OSError(f'could not write {path}')
        counts[split] = len(chosen)
    return _finish(tmp, out, dict(settings=settings, counts=counts,
                                  classes=CLASSES), f'{counts} images')


def _finish(tmp, out, manifest, what):
    """Write ``tmp``'s manifest, move ``tmp`` into place as ``out`` (a
    finished folder, or nothing), and return ``manifest['counts']``."""
    with open(osp.join(tmp, 'manifest.json'), 'w') as f:
        json.dump(manifest, f, indent=2)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    os.replace(tmp, out)
    print(f'[data] wrote {what} to {out}')
    return manifest['counts']


def _up_to_date(out, settings):
    manifest = osp.join(out, 'manifest.json')
    if osp.isfile(manifest):
        with open(manifest) as f:
            if json.load(f).get('settings') == settings:
                print(f'[data] {out} is up to date')
                return True
    return False


def _place(rng, canvas, size, boxes, tries=100):
    """Top-left corner for a size x size patch overlapping no box, or None."""
    for _ in range(tries):
        x, y = rng.integers(0, canvas - size + 1, size=2)
        if all(x + size <= bx or bx + bw <= x or y + size <= by
               or by + bh <= y for bx, by, bw, bh in boxes):
            return int(x), int(y)
    return None


def write_detection(source, out, train_images, val_images, seed,
                    canvas=128, objects=(2, 4), test_images=0):
    """Write the COCO-format detection set; return the number of boxes.

    ``test`` (``test_images`` > 0) pastes only items of the 10k test images
    that no ``val`` image shows: the held-out split. It is drawn last, so
    ``train`` and ``val`` do not depend on it.
    """
    import cv2
    from tqdm import tqdm
    settings = dict(source=osp.abspath(source), train_images=train_images,
                    val_images=val_images, test_images=test_images,
                    seed=seed, canvas=canvas, objects=list(objects))
    if _up_to_date(out, settings):
        return None
    rng = np.random.default_rng(seed)
    tmp = out.rstrip('/') + '.part'
    shutil.rmtree(tmp, ignore_errors=True)
    categories = [dict(id=i + 1, name=n) for i, n in enumerate(CLASSES)]
    counts = {}
    splits = [('train', train_images), ('val', val_images)]
    splits += [('test', test_images)] if test_images else []
    shown_in_val = set()
    for split, num in splits:
        items, labels = load_split(source, 'train' if split == 'train'
                                   else 'val')
        pool = np.setdiff1d(np.arange(len(items)), sorted(shown_in_val)) \
            if split == 'test' else None
        os.makedirs(osp.join(tmp, split))
        images, annotations = [], []
        for image_id in tqdm(range(num), desc=f'[data] det {split}',
                             unit='img'):
            img = np.zeros((canvas, canvas), np.uint8)
            placed = []
            for _ in range(rng.integers(objects[0], objects[1] + 1)):
                k = int(rng.integers(len(items))) if pool is None \
                    else int(pool[rng.integers(len(pool))])
                if split == 'val':
                    shown_in_val.add(k)
                size = int(round(28 * rng.uniform(1.0, 1.6)))
                corner = _place(rng, canvas, size, [p[0] for p in placed])
                if corner is None:
                    continue
                patch = cv2.resize(items[k], (size, size))
                x, y = corner
                img[y:y + size, x:x + size] = patch
                ys, xs = np.nonzero(patch > 10)
                box = [x + int(xs.min()), y + int(ys.min()),
                       int(xs.max() - xs.min() + 1),
                       int(ys.max() - ys.min() + 1)]
                placed.append(((x, y, size, size), box, int(labels[k])))
            name = f'{image_id:05d}.png'
            if not cv2.imwrite(osp.join(tmp, split, name), img):
                raise OSError(f'could not write {name}')
            images.append(dict(id=image_id, file_name=name, width=canvas,
                               height=canvas))
            for _, box, label in placed:
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=image_id,
                    category_id=label + 1, bbox=box,
                    area=box[2] * box[3], iscrowd=0))
        with open(osp.join(tmp, f'instances_{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations,
                           categories=categories), f)
        counts[split] = dict(images=num, boxes=len(annotations))
    return _finish(tmp, out, dict(settings=settings, counts=counts),
                   str(counts))


def write_cifar10_subset(archive, out, test_per_class=30):
    """Unpack the repository's CIFAR-10 subset (``datasets/``) as class
    folders with a held-out test split; return the number of images.

    ``train``: the archive's training images but the last ``test_per_class``
    of each class by name (270 a class); ``test``: those (30 a class, never
    trained or evaluated on before this split existed); ``val``: the
    archive's 600 images from the CIFAR-10 test set, unchanged (the studies'
    choices were made on them).
    """
    import tarfile
    settings = dict(archive=osp.basename(archive),
                    test_per_class=test_per_class)
    if _up_to_date(out, settings):
        return None
    if not osp.isfile(archive):
        raise FileNotFoundError(f'{archive} is missing (it ships in the '
                                'repository under datasets/)')
    tmp = out.rstrip('/') + '.part'
    shutil.rmtree(tmp, ignore_errors=True)
    counts = dict(train=0, val=0, test=0)
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()),
                         key=lambda m: m.name)
        by_class = {}
        for m in members:
            _, split, name, _ = m.name.split('/')
            by_class.setdefault((split, name), []).append(m)
        for (split, name), files in sorted(by_class.items()):
            for i, m in enumerate(files):
                kept = split
                if split == 'train' and i >= len(files) - test_per_class:
                    kept = 'test'
                path = osp.join(tmp, kept, name, osp.basename(m.name))
                os.makedirs(osp.dirname(path), exist_ok=True)
                with tar.extractfile(m) as f, open(path, 'wb') as g:
                    g.write(f.read())
                counts[kept] += 1
    return _finish(tmp, out, dict(settings=settings, counts=counts),
                   f'{counts} images')


__all__ = ['CLASSES', 'DEFAULT_SOURCE', 'write_cifar10_subset',
           'write_classification', 'write_detection']
