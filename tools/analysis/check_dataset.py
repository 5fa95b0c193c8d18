"""Check the COCO-panoptic split a config's dataloader reads.

    python tools/analysis/check_dataset.py CONFIG [--split train|val|test] [--report FILE]

Runs :mod:`mmmaps.datasets.validation` on ``{split}_dataloader.dataset``
(``data_root``/``ann_file``/``data_prefix``): segments listed but absent from
their PNG (and PNG ids not listed), PNG encoding, duplicate image ids and file
names, annotations without image, unknown categories, degenerate or mismatched
image sizes. Prints a summary; exit code 1 when problems are found (all listed
in ``--report`` as JSON), 0 for a clean split.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../../..'))  # noqa (this checkout first)

import argparse
import os.path as osp
import sys

from mmengine.config import Config, DictAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Check a COCO-panoptic split of a config')
    parser.add_argument('config', help='config with {split}_dataloader')
    parser.add_argument('--split', choices=['train', 'val', 'test'], default='train')
    parser.add_argument('--report', help='write every problem to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy format')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not osp.isfile(args.config):
        sys.exit(f'config file {args.config!r} does not exist')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)

    from mmmaps.datasets.validation import (check_panoptic_split, dataset_classes,
                                            format_problems, split_paths)
    from mmmaps.memory.dataset_records import dataset_cfg_of
    dataset_cfg = dataset_cfg_of(cfg, args.split)
    paths = split_paths(dataset_cfg)
    if not osp.isfile(paths['ann_file']):
        sys.exit(f'check_dataset.py: error: {paths["ann_file"]} does not exist')
    result = check_panoptic_split(**paths, classes=dataset_classes(dataset_cfg),
                                  skip_invalid=True, report_file=args.report)
    num_images = result['num_images']
    if not result['problems']:
        print(f'{paths["ann_file"]}: {num_images} images, no problems')
        return 0
    print(format_problems(result['problems'], paths['ann_file']))
    print(f'{len(result["dropped_image_ids"])} of {num_images} images have problems'
          + (f'; all listed in {args.report}' if args.report else ''))
    return 1


if __name__ == '__main__':
    sys.exit(main())
