"""Convert Cityscapes (gtFine instance ids + leftImg8bit) to COCO panoptic.

Example::

    python tools/dataset_converters/cityscapes2coco_panoptic.py data/cityscapes --nproc 8

Reads ``gtFine/{train,val}/<city>/*_gtFine_instanceIds.png`` (value < 1000: label id,
>= 1000: label id * 1000 + instance) and checks that each
``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` exists; keeps the 19 evaluated classes
(8 things, 11 stuff) and writes into ROOT/annotations (or ``--out``)::

    cityscapes_panoptic_{train,val}.json                  COCO panoptic, things first
    cityscapes_panoptic_{train,val}/<city>/*_leftImg8bit.png  RGB id encoding, 0 = void
    cityscapes_panoptic_{train,val}/*_leftImg8bit.png     links to the above (mmdet's metric
                                                          looks the ground truth up by base name)
    instancesonly_filtered_gtFine_{train,val}.json        COCO instances of the things, for AP

which ``configs/_base_/datasets/cityscapes_panoptic.py`` reads. The conversion follows
cityscapesscripts' ``createPanopticImgs`` (segment ids, crowd groups) without needing
cityscapesscripts; see ``mmmaps/datasets/panoptic_conversion/cityscapes.py`` and ``data/README.md``.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../../..'))  # noqa (this checkout first)

import argparse
import os.path as osp
import sys

from mmmaps.datasets.panoptic_conversion.cityscapes import CITYSCAPES_SPLITS, convert_cityscapes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('root', help='the Cityscapes folder (with gtFine/ and leftImg8bit/)')
    parser.add_argument('--out', help='output folder (default: ROOT/annotations)')
    parser.add_argument('--splits', nargs='+', default=list(CITYSCAPES_SPLITS),
                        choices=list(CITYSCAPES_SPLITS))
    parser.add_argument('--nproc', type=int, default=1, help='worker processes')
    parser.add_argument('--no-instances', action='store_true',
                        help='skip the instances JSON (mask AP needs it)')
    parser.add_argument('--force', action='store_true', help='replace existing outputs')
    parser.add_argument('--no-progress', action='store_true')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        results = convert_cityscapes(args.root, out=args.out, splits=args.splits,
                                     nproc=args.nproc, instances=not args.no_instances,
                                     force=args.force, progress=not args.no_progress)
    except (OSError, ValueError) as err:
        sys.exit(f'cityscapes2coco_panoptic: {err}')
    out = args.out or osp.join(args.root, 'annotations')
    for split, s in results.items():
        print(f'{split}: {s["images"]} images, {s["things"]} thing, {s["crowd"]} crowd and '
              f'{s["stuff"]} stuff segments, {s["void_pixels"] / s["pixels"]:.1%} void pixels, '
              f'written to {out} in {s["seconds"]:.1f}s')


if __name__ == '__main__':
    main()
