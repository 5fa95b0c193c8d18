"""Cityscapes (``gtFine`` instance ids + ``leftImg8bit``) -> COCO panoptic.

Used by ``tools/dataset_converters/cityscapes2coco_panoptic.py``; the output format is that
of :mod:`mmmaps.datasets.panoptic_conversion`, ``data/README.md`` documents the download.

Cityscapes native format (``gtFine_trainvaltest.zip``, ``leftImg8bit_trainvaltest.zip``):
``gtFine/{split}/<city>/<name>_gtFine_instanceIds.png`` (16 bit): a pixel value ``< 1000`` is a
label id of ``cityscapesscripts.helpers.labels``, ``>= 1000`` is ``label id * 1000 +
instance``. The 19 evaluated (train id) classes are kept; the rest (unlabeled, ego vehicle,
caravan, trailer, ...) is void. Thing pixels without an instance (groups such as "cars")
become one crowd segment per class (``iscrowd=1``, id = label id), as in cityscapesscripts'
``createPanopticImgs``. Unlike that script, categories are listed things first, image
``file_name`` keeps the city folder (``<city>/<name>_leftImg8bit.png``, relative to
``leftImg8bit/{split}/``) and the PNGs are named after the images, which is what mmdet's
dataset and metric look up (see :func:`convert_cityscapes`).
"""
import os
import os.path as osp
import shutil
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from mmmaps.utils.output_dirs import check_targets

from .common import (CONVERTED_SPLIT, LABEL_DIVISOR, check_size, convert_split, image_size,
                     panoptic_categories, panoptic_segments, read_map, require_dir,
                     segment_category, segment_entries, split_targets, write_panoptic_png)

# The 19 evaluated classes, (name, label id, colour), things first
# (cityscapesscripts/helpers/labels.py)
CITYSCAPES_THINGS = (
    ('person', 24, (220, 20, 60)), ('rider', 25, (255, 0, 0)), ('car', 26, (0, 0, 142)),
    ('truck', 27, (0, 0, 70)), ('bus', 28, (0, 60, 100)), ('train', 31, (0, 80, 100)),
    ('motorcycle', 32, (0, 0, 230)), ('bicycle', 33, (119, 11, 32)))
CITYSCAPES_STUFF = (
    ('road', 7, (128, 64, 128)), ('sidewalk', 8, (244, 35, 232)), ('building', 11, (70, 70, 70)),
    ('wall', 12, (102, 102, 156)), ('fence', 13, (190, 153, 153)), ('pole', 17, (153, 153, 153)),
    ('traffic light', 19, (250, 170, 30)), ('traffic sign', 20, (220, 220, 0)),
    ('vegetation', 21, (107, 142, 35)), ('terrain', 22, (152, 251, 152)),
    ('sky', 23, (70, 130, 180)))
CITYSCAPES_METAINFO = dict(
    classes=tuple(c[0] for c in CITYSCAPES_THINGS + CITYSCAPES_STUFF),
    thing_classes=tuple(c[0] for c in CITYSCAPES_THINGS),
    stuff_classes=tuple(c[0] for c in CITYSCAPES_STUFF),
    palette=[c[2] for c in CITYSCAPES_THINGS + CITYSCAPES_STUFF])
CITYSCAPES_SPLITS = ('train', 'val')


_CS_THING_SET = frozenset(c[1] for c in CITYSCAPES_THINGS)
_CS_STUFF_SET = frozenset(c[1] for c in CITYSCAPES_STUFF)
_CS_GT_SUFFIX = '_gtFine_instanceIds.png'
_CS_IMG_SUFFIX = '_leftImg8bit.png'


def cityscapes_panoptic_map(instance_ids: np.ndarray) -> Tuple[np.ndarray, set]:
    """Panoptic id map (int64, 0 = void) and crowd segment ids of a ``*_instanceIds`` map."""
    ids = instance_ids.astype(np.int64)
    pan = np.zeros_like(ids)
    crowd = set()
    for value in np.unique(ids):
        label = int(value) // LABEL_DIVISOR if value >= LABEL_DIVISOR else int(value)
        if label in _CS_STUFF_SET:
            pan[ids == value] = label  # one segment per stuff class
        elif label in _CS_THING_SET:
            pan[ids == value] = value  # label*1000+k for instances, label for a crowd group
            if value < LABEL_DIVISOR:
                crowd.add(int(value))
    return pan, crowd


def _cityscapes_image(task) -> dict:
    (image_id, gt_path, image_rel, image_path, png_root, with_instances) = task
    size = image_size(image_path)
    ids = read_map(gt_path, 'instance id map')
    if ids.ndim != 2 or ids.dtype not in (np.uint16, np.int32, np.uint8):
        raise ValueError(f'instance id map {gt_path} must be a single-channel 16-bit PNG, got '
                         f'shape {ids.shape} dtype {ids.dtype}')
    check_size(ids, size, gt_path, image_path)
    pan, crowd = cityscapes_panoptic_map(ids)
    write_panoptic_png(osp.join(png_root, image_rel), pan)
    # mmdet's CocoPanopticMetric finds the ground truth by the image's base name directly in
    # seg_prefix, the dataset by its relative path: a relative link serves the former.
    flat = osp.join(png_root, osp.basename(image_rel))
    try:
        os.symlink(image_rel, flat)
    except OSError:
        shutil.copyfile(osp.join(png_root, image_rel), flat)
    segments = panoptic_segments(pan, segment_category, crowd)
    annotation, instances, stats = segment_entries(
        image_id, image_rel, segments, with_instances, _CS_THING_SET)
    stats.update(pixels=pan.size, void_pixels=int((pan == 0).sum()))
    image = dict(id=image_id, file_name=image_rel, height=size[0], width=size[1])
    return dict(image=image, annotation=annotation, instances=instances, stats=stats)


def cityscapes_output_names(split: str) -> Dict[str, str]:
    """Output names (relative to the output folder) of one split."""
    return dict(png_dir=f'cityscapes_panoptic_{split}',
                panoptic_json=f'cityscapes_panoptic_{split}.json',
                instances_json=f'instancesonly_filtered_gtFine_{split}.json')


def convert_cityscapes(root: str, out: Optional[str] = None,
                       splits: Sequence[str] = ('train', 'val'), nproc: int = 1,
                       instances: bool = True, force: bool = False,
                       progress: bool = True) -> Dict[str, dict]:
    """``gtFine`` + ``leftImg8bit`` under ``root`` -> COCO panoptic in ``out`` (default
    ``root/annotations``): ``cityscapes_panoptic_{split}.json``,
    ``cityscapes_panoptic_{split}/<city>/<name>_leftImg8bit.png`` (plus a link
    ``cityscapes_panoptic_{split}/<name>_leftImg8bit.png`` to each, or a copy where links are
    not possible) and (``instances``) ``instancesonly_filtered_gtFine_{split}.json``.
    Returns per-split counts."""
    out = osp.join(root, 'annotations') if out is None else out
    require_dir(root, 'Cityscapes root')
    tasks_of = {}
    for split in splits:
        if split not in CITYSCAPES_SPLITS:
            raise ValueError(f'unknown Cityscapes split {split!r}; choose from '
                             f'{list(CITYSCAPES_SPLITS)} (test has no public annotations)')
        gt_dir = osp.join(root, 'gtFine', split)
        img_dir = osp.join(root, 'leftImg8bit', split)
        require_dir(gt_dir, 'annotation folder')
        require_dir(img_dir, 'image folder')
        tasks = []
        for city in sorted(os.listdir(gt_dir)):
            if not osp.isdir(osp.join(gt_dir, city)):
                continue
            for name in sorted(os.listdir(osp.join(gt_dir, city))):
                if not name.endswith(_CS_GT_SUFFIX):
                    continue
                image_rel = f'{city}/{name[:-len(_CS_GT_SUFFIX)]}{_CS_IMG_SUFFIX}'
                image_path = osp.join(img_dir, image_rel)
                if not osp.isfile(image_path):
                    raise FileNotFoundError(f'image {image_path} of annotation '
                                            f'{osp.join(gt_dir, city, name)} does not exist')
                tasks.append((len(tasks) + 1, osp.join(gt_dir, city, name), image_rel,
                              image_path))
        if not tasks:
            raise FileNotFoundError(f'no <city>/*{_CS_GT_SUFFIX} files in {gt_dir}')
        tasks_of[split] = tasks
    check_targets(out, [split_targets(cityscapes_output_names(s), instances) for s in splits],
                  CONVERTED_SPLIT, force)
    labels = CITYSCAPES_THINGS + CITYSCAPES_STUFF
    categories = panoptic_categories([c[0] for c in labels], [c[1] for c in labels],
                                     len(CITYSCAPES_THINGS), [c[2] for c in labels])
    results = {}
    for split in splits:
        start = time.perf_counter()
        info = dict(description=f'Cityscapes panoptic {split} (mmmaps cityscapes2coco_panoptic)')
        stats = convert_split(tasks_of[split], _cityscapes_image, out,
                              cityscapes_output_names(split), categories, info, instances,
                              nproc, f'cityscapes {split}', progress)
        stats['seconds'] = time.perf_counter() - start
        results[split] = stats
    return results
