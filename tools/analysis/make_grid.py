"""Stack the first N images of a folder (e.g. tools/test.py --show-dir output) into one PNG.

    python tools/analysis/make_grid.py SHOW_DIR --out overlay.png --num 6 --cols 2
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../../..'))  # noqa (this checkout first)

import argparse
import glob
import os
import os.path as osp
import sys

import cv2
import numpy as np


def make_grid(paths, cols):
    images = [cv2.imread(p) for p in paths]
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    tiles = [cv2.copyMakeBorder(im, 0, h - im.shape[0], 0, w - im.shape[1],
                                cv2.BORDER_CONSTANT, value=(255, 255, 255)) for im in images]
    while len(tiles) % cols:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.concatenate(tiles[i:i + cols], axis=1) for i in range(0, len(tiles), cols)]
    return np.concatenate(rows, axis=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('folder')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--num', type=int, default=6)
    parser.add_argument('--cols', type=int, default=2)
    args = parser.parse_args(argv)
    paths = sorted(p for ext in ('jpg', 'png') for p in glob.glob(osp.join(args.folder, f'*.{ext}')))
    if not paths:
        sys.exit(f'make_grid: no .jpg/.png images in {args.folder}')
    grid = make_grid(paths[:args.num], args.cols)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    tmp = args.out + '.tmp.png'
    cv2.imwrite(tmp, grid)
    os.replace(tmp, args.out)
    print(f'wrote {args.out} ({grid.shape[1]}x{grid.shape[0]}, {min(args.num, len(paths))} images)')


if __name__ == '__main__':
    main()
