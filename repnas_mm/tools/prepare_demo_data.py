#!/usr/bin/env python
"""Write the demo's data sets (:mod:`repnas_mm.demo_data` says what is in them).

    python tools/prepare_demo_data.py --out data/demo/fmnist --det-out data/demo/fmnist_det
    python tools/prepare_demo_data.py --cifar10-out data/cifar10_subset

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package; the
CIFAR-10 subset ships with repnas_mm (``datasets/cifar10_subset.tar.gz``).
"""
import argparse
import sys

from repnas_mm.demo_data import (CIFAR10_ARCHIVE, DEFAULT_SOURCE,
                                 write_cifar10_subset, write_classification,
                                 write_detection)
from repnas_mm.resources import dataset_path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--source', default=DEFAULT_SOURCE)
    parser.add_argument('--out', default='data/demo/fmnist')
    parser.add_argument('--train-per-class', type=int, default=200)
    parser.add_argument('--val-per-class', type=int, default=50)
    parser.add_argument('--test-per-class', type=int, default=100,
                        help='held-out test images a class (from the 10k '
                        'test images, none of them in val)')
    parser.add_argument('--det-out', default='data/demo/fmnist_det')
    parser.add_argument('--det-train-images', type=int, default=600)
    parser.add_argument('--det-val-images', type=int, default=100)
    parser.add_argument('--det-test-images', type=int, default=200)
    parser.add_argument('--cifar10-out', default=None,
                        help='write only the CIFAR-10 subset (from '
                        'datasets/cifar10_subset.tar.gz) to this folder')
    parser.add_argument('--cifar10-test-per-class', type=int, default=30)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.cifar10_out:
            write_cifar10_subset(dataset_path(CIFAR10_ARCHIVE),
                                 args.cifar10_out,
                                 args.cifar10_test_per_class)
            return 0
        write_classification(args.source, args.out, args.train_per_class,
                             args.val_per_class, args.seed,
                             args.test_per_class)
        write_detection(args.source, args.det_out, args.det_train_images,
                        args.det_val_images, args.seed,
                        test_images=args.det_test_images)
    except FileNotFoundError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
