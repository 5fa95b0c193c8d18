"""Convert ADE20K (ADEChallengeData2016 + instance annotations) to COCO panoptic.

Example::

    python tools/dataset_converters/ade20k2coco_panoptic.py data/ADEChallengeData2016 --nproc 8

Reads ``images/{training,validation}/*.jpg``, the semantic maps
``annotations/{training,validation}/*.png`` and the instance maps
``annotations_instance/{training,validation}/*.png`` (R channel: instance-track class 1..100,
G channel: instance id), and writes into ROOT (or ``--out``)::

    ade20k_panoptic_{train,val}.json        COCO panoptic, 150 categories, things first
    ade20k_panoptic_{train,val}/*.png       RGB id encoding (id = R + 256 G + 256^2 B, 0 = void)
    ade20k_instance_{train,val}.json        COCO instances of the 100 thing classes (RLE), for AP

which ``configs/_base_/datasets/ade20k_panoptic.py`` reads. Formats and assumptions are
documented in ``mmmaps/datasets/panoptic_conversion/ade20k.py`` and ``data/README.md``.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../../..'))  # noqa (this checkout first)

import argparse
import sys

from mmmaps.datasets.panoptic_conversion.ade20k import ADE20K_SPLITS, convert_ade20k


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('root', help='the ADEChallengeData2016 folder')
    parser.add_argument('--out', help='output folder (default: ROOT)')
    parser.add_argument('--splits', nargs='+', default=list(ADE20K_SPLITS),
                        choices=list(ADE20K_SPLITS))
    parser.add_argument('--nproc', type=int, default=1, help='worker processes')
    parser.add_argument('--no-instances', action='store_true',
                        help='skip the instances JSON (mask AP needs it)')
    parser.add_argument('--force', action='store_true', help='replace existing outputs')
    parser.add_argument('--no-progress', action='store_true')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        results = convert_ade20k(args.root, out=args.out, splits=args.splits, nproc=args.nproc,
                                 instances=not args.no_instances, force=args.force,
                                 progress=not args.no_progress)
    except (OSError, ValueError) as err:
        sys.exit(f'ade20k2coco_panoptic: {err}')
    out = args.out or args.root
    for split, s in results.items():
        agree = s['instances_agree'] / max(s['instances'], 1)
        print(f'{split}: {s["images"]} images, {s["things"]} thing and {s["stuff"]} stuff '
              f'segments, {s["void_pixels"] / s["pixels"]:.1%} void pixels, written to {out} '
              f'in {s["seconds"]:.1f}s')
        print(f'{split}: the semantic map agrees with the instance class (R channel) on '
              f'{agree:.1%} of {s["instances"]} instances')
        if s['instances'] and agree < 0.5:
            print(f'WARNING: {split}: most instances disagree with the semantic map; is the R '
                  'channel of annotations_instance the instance-track class (1..100)?',
                  file=sys.stderr)


if __name__ == '__main__':
    main()
