"""Convert ADE20K and Cityscapes from their native formats to COCO panoptic.

Used by ``tools/dataset_converters/ade20k2coco_panoptic.py`` and
``tools/dataset_converters/cityscapes2coco_panoptic.py``; ``data/README.md`` documents the
downloads and layouts. Both write what mmdet's ``CocoPanopticDataset`` and the three
evaluators of ``configs/_base_/datasets/{ade20k,cityscapes}_panoptic.py`` read:

* a COCO panoptic JSON whose ``categories`` list the thing classes first, in the order of the
  config's ``metainfo['classes']`` (mmdet derives the contiguous labels from that order), each
  with ``isthing``; a category keeps the dataset's own class id (ADE20K: SceneParse150 index
  1..150; Cityscapes: label id 7..33);
* one PNG per image in panopticapi's RGB id encoding (``id = R + 256 G + 256^2 B``, 0 = void):
  a stuff segment has ``id = category id``, a thing segment ``id = category id * 1000 + k``
  (the Cityscapes ``instanceIds`` convention), so ids are deterministic;
* optionally a COCO instances JSON of the things (RLE masks, same image ids; Cityscapes crowd
  groups with ``iscrowd=1``) for mask AP.

Image ids are 1..N in sorted file order. Outputs are written into a hidden staging folder
beside their targets and renamed into place when a split is complete (the panoptic JSON
last), so an interrupted run never leaves a half-written split; existing outputs are only
replaced with ``force=True``, and only those a converter wrote: each published PNG folder holds
the record of :mod:`mmmaps.utils.output_dirs` (``.mmmaps_output``: every file in it and the
JSONs of its split); a file added to it makes ``force`` refuse.

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
import json
import multiprocessing
import os
import os.path as osp
import shutil
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from mmmaps.utils.output_dirs import check_targets, read_record, write_record

# ---------------------------------------------------------------------------
# ADE20K (SceneParse150)
# ---------------------------------------------------------------------------
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

# ---------------------------------------------------------------------------
# Cityscapes: the 19 evaluated classes, (name, label id, colour), things first
# (cityscapesscripts/helpers/labels.py)
# ---------------------------------------------------------------------------
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
LABEL_DIVISOR = 1000  # thing segment id = category id * 1000 + k


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------
def panoptic_categories(names: Sequence[str], ids: Sequence[int], num_things: int,
                        palette: Sequence[Sequence[int]]) -> List[dict]:
    """COCO panoptic ``categories`` in label order (the first ``num_things`` are things)."""
    return [dict(id=int(cat_id), name=name, supercategory='thing' if i < num_things else 'stuff',
                 isthing=int(i < num_things), color=list(colour))
            for i, (name, cat_id, colour) in enumerate(zip(names, ids, palette))]


def _bbox(mask: np.ndarray) -> List[int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
            int(rows[-1] - rows[0] + 1)]


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    return rle


def _segment_category(seg_id: int) -> int:
    """Category id of a segment id (``category * 1000 + k`` for things, else the category)."""
    return seg_id // LABEL_DIVISOR if seg_id >= LABEL_DIVISOR else seg_id


def _segments(pan: np.ndarray, category_of, crowd_ids=()) -> List[Tuple[dict, np.ndarray]]:
    """``segments_info`` entries (area and box on ``pan``) with their masks, by segment id."""
    out = []
    for seg_id in np.unique(pan):
        if seg_id == 0:
            continue
        mask = pan == seg_id
        out.append((dict(id=int(seg_id), category_id=int(category_of(int(seg_id))),
                         iscrowd=int(int(seg_id) in crowd_ids), bbox=_bbox(mask),
                         area=int(mask.sum())), mask))
    return out


def _write_png(path: str, pan: np.ndarray) -> None:
    from panopticapi.utils import id2rgb
    os.makedirs(osp.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, id2rgb(pan)[..., ::-1]):
        raise OSError(f'could not write {path}')


def _read(path: str, what: str) -> np.ndarray:
    if not osp.isfile(path):
        raise FileNotFoundError(f'{what} {path} does not exist')
    array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError(f'{what} {path} could not be read as an image')
    return array


def _image_size(path: str) -> Tuple[int, int]:
    """(height, width) from the image header."""
    from PIL import Image
    if not osp.isfile(path):
        raise FileNotFoundError(f'image {path} does not exist')
    try:
        with Image.open(path) as img:
            width, height = img.size
    except OSError as err:
        raise ValueError(f'image {path} could not be read: {err}') from None
    return height, width


def _check_size(array: np.ndarray, size: Tuple[int, int], path: str, image: str) -> None:
    if tuple(array.shape[:2]) != tuple(size):
        raise ValueError(f'{path} is {array.shape[0]}x{array.shape[1]} but its image {image} '
                         f'is {size[0]}x{size[1]} (HxW)')


def _require_dir(path: str, what: str, hint: str = '') -> None:
    if not osp.isdir(path):
        raise FileNotFoundError(f'{what} {path} does not exist ({hint}see data/README.md)')


CONVERTED_SPLIT = 'converted panoptic split'  # the ``what`` of a PNG folder's record


class _Staging:
    """Outputs built in a hidden folder of ``out_dir``, renamed onto their targets by
    :meth:`publish` in the order given (a JSON last: its presence means complete). The PNG
    folder (the first target) records every file in it and the JSONs beside it."""

    def __init__(self, out_dir: str, targets: Sequence[str], tag: str):
        self.out_dir, self.targets, self.tag = out_dir, list(targets), tag
        os.makedirs(out_dir, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix=f'.{tag}.partial-', dir=out_dir)

    def path(self, name: str) -> str:
        return osp.join(self.dir, name)

    def publish(self) -> None:
        # the targets may have changed during the conversion: still only replace our own
        check_targets(self.out_dir, [self.targets], CONVERTED_SPLIT, force=True)
        # the record keeps vouching for JSONs of an earlier run this one leaves alone
        earlier = read_record(osp.join(self.out_dir, self.targets[0]), CONVERTED_SPLIT)
        siblings = set(self.targets[1:]) | {
            name for name in (earlier or {}).get('siblings', ())
            if osp.isfile(osp.join(self.out_dir, name))}
        write_record(self.path(self.targets[0]), CONVERTED_SPLIT, siblings)
        old = tempfile.mkdtemp(prefix=f'.{self.tag}.old-', dir=self.out_dir)
        for name in self.targets:
            final = osp.join(self.out_dir, name)
            if osp.lexists(final):
                os.rename(final, osp.join(old, name))
            os.rename(self.path(name), final)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _split_targets(names: Dict[str, str], with_instances: bool) -> List[str]:
    """The outputs of one split, its PNG folder (which holds the record) first."""
    return [names['png_dir']] + ([names['instances_json']] if with_instances else []) + [
        names['panoptic_json']]


def _map(fn, tasks: list, nproc: int, desc: str, progress: bool):
    """``fn`` over ``tasks`` in order, in ``nproc`` processes, with a progress bar."""
    from tqdm import tqdm
    bar = dict(total=len(tasks), desc=desc, unit='img', disable=not progress)
    if nproc <= 1 or len(tasks) <= 1:
        yield from tqdm(map(fn, tasks), **bar)
        return
    with multiprocessing.Pool(min(nproc, len(tasks))) as pool:
        chunk = max(1, min(16, len(tasks) // (4 * nproc)))
        yield from tqdm(pool.imap(fn, tasks, chunksize=chunk), **bar)


def _dump(path: str, obj: dict) -> None:
    with open(path, 'w') as f:
        json.dump(obj, f)


def _convert_split(tasks: list, worker, out_dir: str, names: Dict[str, str], categories,
                   info: dict, with_instances: bool, nproc: int, desc: str,
                   progress: bool) -> dict:
    """Run ``worker`` over ``tasks`` into a staging folder and publish the split.

    ``names``: ``png_dir``, ``panoptic_json`` and (optionally) ``instances_json``, relative to
    ``out_dir``. Returns the split's counts.
    """
    targets = _split_targets(names, with_instances)
    stage = _Staging(out_dir, targets, tag=osp.basename(names['panoptic_json'])[:-5])
    try:
        png_root = stage.path(names['png_dir'])
        os.makedirs(png_root)
        images, annotations, instances = [], [], []
        stats: Dict[str, int] = {}
        for result in _map(worker, [t + (png_root, with_instances) for t in tasks], nproc,
                           desc, progress):
            images.append(result['image'])
            annotations.append(result['annotation'])
            for ann in result['instances']:
                instances.append(dict(ann, id=len(instances) + 1))
            for key, value in result['stats'].items():
                stats[key] = stats.get(key, 0) + value
        if with_instances:
            _dump(stage.path(names['instances_json']), dict(
                info=info, licenses=[], images=images, annotations=instances,
                categories=[c for c in categories if c['isthing']]))
        _dump(stage.path(names['panoptic_json']), dict(
            info=info, licenses=[], images=images, annotations=annotations,
            categories=categories))
        stage.publish()
    except BaseException:
        stage.discard()
        raise
    stats['images'] = len(images)
    return stats


def _segment_entries(image_id: int, file_name: str, segments, with_instances: bool,
                     thing_ids) -> Tuple[dict, List[dict], Dict[str, int]]:
    annotation = dict(image_id=image_id, file_name=file_name,
                      segments_info=[info for info, _ in segments])
    instances = []
    stats = dict(things=0, stuff=0, crowd=0)
    for info, mask in segments:
        if info['category_id'] not in thing_ids:
            stats['stuff'] += 1
            continue
        stats['crowd' if info['iscrowd'] else 'things'] += 1
        if with_instances:
            instances.append(dict(image_id=image_id, category_id=info['category_id'],
                                  segmentation=_rle(mask), area=info['area'],
                                  bbox=info['bbox'], iscrowd=info['iscrowd']))
    return annotation, instances, stats


# ---------------------------------------------------------------------------
# ADE20K
# ---------------------------------------------------------------------------
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
    size = _image_size(image_path)
    semantic = _read(sem_path, 'semantic map')
    if semantic.ndim != 2 or semantic.dtype != np.uint8:
        raise ValueError(f'semantic map {sem_path} must be a single-channel 8-bit PNG, got '
                         f'shape {semantic.shape} dtype {semantic.dtype}')
    _check_size(semantic, size, sem_path, image_path)
    instance = _read(inst_path, 'instance map')
    if instance.ndim != 3 or instance.shape[2] not in (3, 4) or instance.dtype != np.uint8:
        raise ValueError(f'instance map {inst_path} must be an 8-bit RGB PNG, got shape '
                         f'{instance.shape} dtype {instance.dtype}')
    _check_size(instance, size, inst_path, image_path)
    pan, stats = ade20k_panoptic_map(semantic, instance[..., 2::-1], sem_path, inst_path)
    stem = osp.splitext(osp.basename(image_path))[0]
    _write_png(osp.join(png_root, stem + '.png'), pan)
    segments = _segments(pan, _segment_category)
    annotation, instances, seg_stats = _segment_entries(
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
    _require_dir(root, 'ADE20K root')
    tasks_of = {}
    for split in splits:
        if split not in ADE20K_SPLITS:
            raise ValueError(f'unknown ADE20K split {split!r}; choose from '
                             f'{sorted(ADE20K_SPLITS)}')
        folder = ADE20K_SPLITS[split]
        image_dir = osp.join(root, 'images', folder)
        sem_dir = osp.join(root, 'annotations', folder)
        inst_dir = osp.join(root, 'annotations_instance', folder)
        _require_dir(image_dir, 'image folder')
        _require_dir(sem_dir, 'semantic annotation folder')
        _require_dir(inst_dir, 'instance annotation folder',
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
    check_targets(out, [_split_targets(ade20k_output_names(s), instances) for s in splits],
                  CONVERTED_SPLIT, force)
    categories = panoptic_categories(ADE20K_METAINFO['classes'], ADE20K_LABEL_IDS,
                                     len(ADE20K_THING_IDS), ADE20K_METAINFO['palette'])
    results = {}
    for split in splits:
        start = time.perf_counter()
        info = dict(description=f'ADE20K panoptic {split} (mmmaps ade20k2coco_panoptic)')
        stats = _convert_split(tasks_of[split], _ade20k_image, out, ade20k_output_names(split),
                               categories, info, instances, nproc, f'ade20k {split}', progress)
        stats['seconds'] = time.perf_counter() - start
        results[split] = stats
    return results


# ---------------------------------------------------------------------------
# Cityscapes
# ---------------------------------------------------------------------------
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
    size = _image_size(image_path)
    ids = _read(gt_path, 'instance id map')
    if ids.ndim != 2 or ids.dtype not in (np.uint16, np.int32, np.uint8):
        raise ValueError(f'instance id map {gt_path} must be a single-channel 16-bit PNG, got '
                         f'shape {ids.shape} dtype {ids.dtype}')
    _check_size(ids, size, gt_path, image_path)
    pan, crowd = cityscapes_panoptic_map(ids)
    _write_png(osp.join(png_root, image_rel), pan)
    # mmdet's CocoPanopticMetric finds the ground truth by the image's base name directly in
    # seg_prefix, the dataset by its relative path: a relative link serves the former.
    flat = osp.join(png_root, osp.basename(image_rel))
    try:
        os.symlink(image_rel, flat)
    except OSError:
        shutil.copyfile(osp.join(png_root, image_rel), flat)
    segments = _segments(pan, _segment_category, crowd)
    annotation, instances, stats = _segment_entries(
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
    _require_dir(root, 'Cityscapes root')
    tasks_of = {}
    for split in splits:
        if split not in CITYSCAPES_SPLITS:
            raise ValueError(f'unknown Cityscapes split {split!r}; choose from '
                             f'{list(CITYSCAPES_SPLITS)} (test has no public annotations)')
        gt_dir = osp.join(root, 'gtFine', split)
        img_dir = osp.join(root, 'leftImg8bit', split)
        _require_dir(gt_dir, 'annotation folder')
        _require_dir(img_dir, 'image folder')
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
    check_targets(out, [_split_targets(cityscapes_output_names(s), instances) for s in splits],
                  CONVERTED_SPLIT, force)
    labels = CITYSCAPES_THINGS + CITYSCAPES_STUFF
    categories = panoptic_categories([c[0] for c in labels], [c[1] for c in labels],
                                     len(CITYSCAPES_THINGS), [c[2] for c in labels])
    results = {}
    for split in splits:
        start = time.perf_counter()
        info = dict(description=f'Cityscapes panoptic {split} (mmmaps cityscapes2coco_panoptic)')
        stats = _convert_split(tasks_of[split], _cityscapes_image, out,
                               cityscapes_output_names(split), categories, info, instances,
                               nproc, f'cityscapes {split}', progress)
        stats['seconds'] = time.perf_counter() - start
        results[split] = stats
    return results
