"""ADE20K (SceneParse150 + the Places Challenge instance track) -> COCO panoptic.

Used by ``tools/dataset_converters/ade20k2coco_panoptic.py``; the output format is that of
:mod:`mmmaps.datasets.panoptic_conversion`, ``data/README.md`` documents the download.

ADE20K native format (ADEChallengeData2016 and the instance annotations of the Places
Challenge 2017 instance segmentation track, https://github.com/CSAILVision/placeschallenge):

* ``annotations/{training,validation}/*.png``: uint8 semantic map, value ``v`` in 1..150 is
  SceneParse150 class ``v`` (``ADE20K_CLASSES[v - 1]``), 0 = "other" (void);
* ``annotations_instance/{training,validation}/*.png``: RGB; the R channel is the *instance
  track* class index 1..100 (0 = no object) and the G channel the instance id (0 = none,
  unique within an image whatever its class). Instance class ``k`` is the ``k``-th of the 100
  thing classes in SceneParse150 order (``ADE20K_THING_IDS``): the table of the challenge's
  ``categoryMapping.txt``, shipped by Mask2Former as
  ``datasets/ade20k_instance_catid_mapping.txt`` and used by its
  ``prepare_ade20k_pan_seg.py``.

The panoptic map follows Mask2Former's preparation: stuff segments from the semantic map (one
per class), thing segments from the instance map pasted over them; pixels the semantic map
gives a thing class but no instance covers are void. Unlike that script, segment areas and
boxes are measured on the final map (after the pasting).
"""
import os
import os.path as osp
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from mmmaps.utils.output_dirs import check_targets

from .common import (CONVERTED_SPLIT, LABEL_DIVISOR, check_size, convert_split, image_size,
                     panoptic_categories, panoptic_segments, read_map, require_dir,
                     segment_category, segment_entries, split_targets, write_panoptic_png)

# The 150 classes in SceneParse150 order (semantic map value - 1), named as mmdet's
# ADE20KPanopticDataset names them.
ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road, route', 'bed', 'window',
    'grass', 'cabinet', 'sidewalk, pavement', 'person', 'earth, ground', 'door', 'table',
    'mountain, mount', 'plant', 'curtain', 'chair', 'car', 'water', 'painting, picture',
    'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence',
    'desk', 'rock, stone', 'wardrobe, closet, press', 'lamp', 'tub', 'rail', 'cushion',
    'base, pedestal, stand', 'box', 'column, pillar', 'signboard, sign',
    'chest of drawers, chest, bureau, dresser', 'counter', 'sand', 'sink', 'skyscraper',
    'fireplace', 'refrigerator, icebox', 'grandstand, covered stand', 'path', 'stairs',
    'runway', 'case, display case, showcase, vitrine',
    'pool table, billiard table, snooker table', 'pillow', 'screen door, screen',
    'stairway, staircase', 'river', 'bridge, span', 'bookcase', 'blind, screen',
    'coffee table', 'toilet, can, commode, crapper, pot, potty, stool, throne', 'flower',
    'book', 'hill', 'bench', 'countertop', 'stove', 'palm, palm tree', 'kitchen island',
    'computer', 'swivel chair', 'boat', 'bar', 'arcade machine',
    'hovel, hut, hutch, shack, shanty', 'bus', 'towel', 'light', 'truck', 'tower',
    'chandelier', 'awning, sunshade, sunblind', 'street lamp', 'booth', 'tv', 'airplane',
    'dirt track', 'clothes', 'pole', 'land, ground, soil',
    'bannister, banister, balustrade, balusters, handrail',
    'escalator, moving staircase, moving stairway', 'ottoman, pouf, pouffe, puff, hassock',
    'bottle', 'buffet, counter, sideboard', 'poster, posting, placard, notice, bill, card',
    'stage', 'van', 'ship', 'fountain',
    'conveyer belt, conveyor belt, conveyer, conveyor, transporter', 'canopy',
    'washer, automatic washer, washing machine', 'plaything, toy', 'pool', 'stool',
    'barrel, cask', 'basket, handbasket', 'falls', 'tent', 'bag', 'minibike, motorbike',
    'cradle', 'oven', 'ball', 'food, solid food', 'step, stair', 'tank, storage tank',
    'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen',
    'blanket, cover', 'sculpture', 'hood, exhaust hood', 'sconce', 'vase', 'traffic light',
    'tray', 'trash can', 'fan', 'pier', 'crt screen', 'plate', 'monitor', 'bulletin board',
    'shower', 'radiator', 'glass, drinking glass', 'clock', 'flag'
)
# ADE20K's palette in SceneParse150 order (mmseg's and mmdet's).
ADE20K_PALETTE = [
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255)
]
# SceneParse150 ids (1-based) of the 100 thing classes; instance-track class k (R channel of
# annotations_instance) is ADE20K_THING_IDS[k - 1] (categoryMapping.txt).
ADE20K_THING_IDS = (
    8, 9, 11, 13, 15, 16, 19, 20, 21, 23, 24, 25, 28, 31, 32, 33, 34, 36, 37, 38, 39, 40, 42,
    43, 44, 45, 46, 48, 50, 51, 54, 56, 57, 58, 59, 63, 65, 66, 67, 68, 70, 71, 72, 73, 74, 75,
    76, 77, 79, 81, 82, 83, 84, 86, 87, 88, 89, 90, 91, 93, 94, 96, 98, 99, 103, 104, 105, 108,
    109, 111, 112, 113, 116, 117, 119, 120, 121, 122, 124, 125, 126, 127, 128, 130, 131, 133,
    134, 135, 136, 137, 138, 139, 140, 143, 144, 145, 147, 148, 149, 150)
ADE20K_STUFF_IDS = tuple(i for i in range(1, 151) if i not in ADE20K_THING_IDS)
# Label order (things first): the order of configs/_base_/datasets/ade20k_panoptic.py.
ADE20K_LABEL_IDS = ADE20K_THING_IDS + ADE20K_STUFF_IDS
ADE20K_METAINFO = dict(
    classes=tuple(ADE20K_CLASSES[i - 1] for i in ADE20K_LABEL_IDS),
    thing_classes=tuple(ADE20K_CLASSES[i - 1] for i in ADE20K_THING_IDS),
    stuff_classes=tuple(ADE20K_CLASSES[i - 1] for i in ADE20K_STUFF_IDS),
    palette=[ADE20K_PALETTE[i - 1] for i in ADE20K_LABEL_IDS])
ADE20K_SPLITS = {'train': 'training', 'val': 'validation'}

_ADE_THING_SET = frozenset(ADE20K_THING_IDS)
_ADE_IS_THING = np.zeros(256, dtype=bool)
_ADE_IS_THING[list(ADE20K_THING_IDS)] = True


def ade20k_panoptic_map(semantic: np.ndarray, instance_rgb: np.ndarray,
                        sem_name: str = 'semantic map', inst_name: str = 'instance map'
                        ) -> Tuple[np.ndarray, Dict[str, int]]:
    """Panoptic id map (int64, 0 = void) of one ADE20K image.

    Args:
        semantic: (H, W) uint8 SceneParse150 map (0 = other).
        instance_rgb: (H, W, 3) uint8 instance map in RGB order (R: instance-track class
            1..100, G: instance id).
        sem_name, inst_name: named in errors (the files' paths).
    """
    if semantic.max() > 150:
        raise ValueError(f'{sem_name} has value {int(semantic.max())}; '
                         'SceneParse150 values are 0..150')
    # stuff from the semantic map; thing classes and "other" (0) are void until pasted
    pan = np.where(_ADE_IS_THING[semantic] | (semantic == 0), 0, semantic).astype(np.int64)
    classes, inst = instance_rgb[..., 0], instance_rgb[..., 1]
    count: Dict[int, int] = {}
    stats = dict(instances=0, instances_agree=0)
    for inst_id in np.unique(inst):
        if inst_id == 0:
            continue
        mask = inst == inst_id
        values = np.unique(classes[mask])
        if len(values) != 1 or not 1 <= values[0] <= len(ADE20K_THING_IDS):
            raise ValueError(
                f'{inst_name}: instance {int(inst_id)} (G channel) has class value(s) '
                f'{values.tolist()} in the R channel; expected one value in 1..100 '
                '(the instance-track classes)')
        cat_id = ADE20K_THING_IDS[int(values[0]) - 1]
        count[cat_id] = count.get(cat_id, 0) + 1
        pan[mask] = cat_id * LABEL_DIVISOR + count[cat_id]
        # a sanity statistic: does the semantic map mostly agree with the R channel?
        stats['instances'] += 1
        stats['instances_agree'] += int(
            np.bincount(semantic[mask], minlength=256).argmax() == cat_id)
    return pan, stats


def _ade20k_image(task) -> dict:
    (image_id, image_path, sem_path, inst_path, png_root, with_instances) = task
    size = image_size(image_path)
    semantic = read_map(sem_path, 'semantic map')
    if semantic.ndim != 2 or semantic.dtype != np.uint8:
        raise ValueError(f'semantic map {sem_path} must be a single-channel 8-bit PNG, got '
                         f'shape {semantic.shape} dtype {semantic.dtype}')
    check_size(semantic, size, sem_path, image_path)
    instance = read_map(inst_path, 'instance map')
    if instance.ndim != 3 or instance.shape[2] not in (3, 4) or instance.dtype != np.uint8:
        raise ValueError(f'instance map {inst_path} must be an 8-bit RGB PNG, got shape '
                         f'{instance.shape} dtype {instance.dtype}')
    check_size(instance, size, inst_path, image_path)
    pan, stats = ade20k_panoptic_map(semantic, instance[..., 2::-1], sem_path, inst_path)
    stem = osp.splitext(osp.basename(image_path))[0]
    write_panoptic_png(osp.join(png_root, stem + '.png'), pan)
    segments = panoptic_segments(pan, segment_category)
    annotation, instances, seg_stats = segment_entries(
        image_id, stem + '.png', segments, with_instances, _ADE_THING_SET)
    stats.update(seg_stats, pixels=pan.size, void_pixels=int((pan == 0).sum()))
    image = dict(id=image_id, file_name=osp.basename(image_path), height=size[0],
                 width=size[1])
    return dict(image=image, annotation=annotation, instances=instances, stats=stats)


def ade20k_output_names(split: str) -> Dict[str, str]:
    """Output names (relative to the output folder) of one split."""
    return dict(png_dir=f'ade20k_panoptic_{split}', panoptic_json=f'ade20k_panoptic_{split}.json',
                instances_json=f'ade20k_instance_{split}.json')


def convert_ade20k(root: str, out: Optional[str] = None, splits: Sequence[str] = ('train', 'val'),
                   nproc: int = 1, instances: bool = True, force: bool = False,
                   progress: bool = True) -> Dict[str, dict]:
    """ADEChallengeData2016 + ``annotations_instance`` under ``root`` -> COCO panoptic in
    ``out`` (default ``root``): ``ade20k_panoptic_{split}.json``,
    ``ade20k_panoptic_{split}/<image name>.png`` and (``instances``)
    ``ade20k_instance_{split}.json``. Returns per-split counts."""
    out = root if out is None else out
    require_dir(root, 'ADE20K root')
    tasks_of = {}
    for split in splits:
        if split not in ADE20K_SPLITS:
            raise ValueError(f'unknown ADE20K split {split!r}; choose from '
                             f'{sorted(ADE20K_SPLITS)}')
        folder = ADE20K_SPLITS[split]
        image_dir = osp.join(root, 'images', folder)
        sem_dir = osp.join(root, 'annotations', folder)
        inst_dir = osp.join(root, 'annotations_instance', folder)
        require_dir(image_dir, 'image folder')
        require_dir(sem_dir, 'semantic annotation folder')
        require_dir(inst_dir, 'instance annotation folder',
                    'annotations_instance.tar of the Places Challenge instance track; ')
        names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith('.jpg'))
        if not names:
            raise FileNotFoundError(f'no .jpg images in {image_dir}')
        tasks = []
        for i, name in enumerate(names):
            stem = osp.splitext(name)[0]
            tasks.append((i + 1, osp.join(image_dir, name), osp.join(sem_dir, stem + '.png'),
                          osp.join(inst_dir, stem + '.png')))
            for path in tasks[-1][2:]:  # fail before any work, naming the file
                if not osp.isfile(path):
                    raise FileNotFoundError(f'annotation {path} of image {name} does not exist')
        tasks_of[split] = tasks
    check_targets(out, [split_targets(ade20k_output_names(s), instances) for s in splits],
                  CONVERTED_SPLIT, force)
    categories = panoptic_categories(ADE20K_METAINFO['classes'], ADE20K_LABEL_IDS,
                                     len(ADE20K_THING_IDS), ADE20K_METAINFO['palette'])
    results = {}
    for split in splits:
        start = time.perf_counter()
        info = dict(description=f'ADE20K panoptic {split} (mmmaps ade20k2coco_panoptic)')
        stats = convert_split(tasks_of[split], _ade20k_image, out, ade20k_output_names(split),
                              categories, info, instances, nproc, f'ade20k {split}', progress)
        stats['seconds'] = time.perf_counter() - start
        results[split] = stats
    return results
