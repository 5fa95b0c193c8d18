"""Generate the bundled synthetic panoptic dataset (COCO-panoptic format).

Example::

    python tools/dataset_converters/make_synthetic_panoptic.py \
        --out data/synthetic --num-train 400 --num-val 100 --seed 0 --size 128 128

The classes and scene types are documented in ``data/README.md``.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../../..'))  # noqa (this checkout first)

import argparse
import sys
import time

from mmmaps.datasets.synthetic_panoptic import (SCENE_VARIANTS, STUFF_CLASSES, THING_CLASSES,
                                                generate_synthetic_panoptic)
from mmmaps.utils.output_dirs import OutputOwnershipError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/synthetic', help='output directory')
    parser.add_argument('--num-train', type=int, default=400)
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--size', type=int, nargs=2, default=(128, 128), metavar=('H', 'W'))
    parser.add_argument('--force', action='store_true',
                        help='replace the synthetic dataset already in OUT (also when it has '
                        'the same parameters); a folder of anything else is never replaced')
    parser.add_argument('--variant', default='bundled', choices=sorted(SCENE_VARIANTS),
                        help="the scene types drawn from: 'bundled' (every config's dataset) "
                        "or 'shared_support' (buoys and seals at a lake stand on grass, like "
                        "balls and dogs in a meadow: the twin is told by the scene only) or "
                        "'sky_texture' (meadow and lake alike but for the sky's stripes, "
                        "horizontal or vertical); docs/en/maps_evidence.md")
    parser.add_argument('--no-progress', action='store_true')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        meta = generate_synthetic_panoptic(
            args.out, args.num_train, args.num_val, seed=args.seed, size=args.size,
            force=args.force, progress=not args.no_progress, variant=args.variant)
    except (ValueError, OutputOwnershipError) as err:
        sys.exit(f'make_synthetic_panoptic: {err}')
    elapsed = time.perf_counter() - start
    if meta['reused']:
        print(f'{args.out} already holds this dataset ({meta["params"]}); use --force to '
              'regenerate')
        return
    n = args.num_train + args.num_val
    print(f'wrote {n} images ({args.num_train} train, {args.num_val} val) of size '
          f'{args.size[0]}x{args.size[1]} to {args.out} in {elapsed:.1f}s '
          f'({n / elapsed:.0f} img/s)')
    print(f'{len(THING_CLASSES)} thing classes, {len(STUFF_CLASSES)} stuff classes, '
          f'{len(SCENE_VARIANTS[args.variant])} scene types ({args.variant}); scenes per '
          f'split: {meta["scene_counts"]}')


if __name__ == '__main__':
    main()
