"""Bundled synthetic panoptic dataset in COCO-panoptic format.

Images are procedurally drawn scenes. Each *scene type* has its own stuff layout
(sky/water/sand, sky/grass, wall/road, ...) and its own plausible things. Three
pairs of thing classes are drawn with the *same* shape generator and colour
palette (``car``/``boat``, ``ball``/``buoy``, ``dog``/``seal``), so the object
alone does not tell them apart: the scene does. This is what makes the dataset a
useful test bed for scene/object memory (MAPS) on a CPU.

Everything is deterministic for a seed: image ``i`` of split ``s`` draws from
``np.random.default_rng([seed, split_index, i])``, so images do not depend on how
many others are generated.

Files written under ``out``::

    train/000000000001.jpg ...                    RGB images
    val/...
    annotations/panoptic_{train,val}.json         COCO panoptic
    annotations/panoptic_{train,val}/*.png        RGB id encoding (id = R + 256 G + 256^2 B)
    annotations/instances_{train,val}.json        COCO instances (things, RLE masks)
    annotations/semantic_{train,val}/*.png        uint8 label = contiguous class index, 255 = void
    synthetic_meta.json                           generation parameters
"""
import json
import os
import os.path as osp
import shutil
import tempfile
from functools import lru_cache
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from mmmaps.utils.output_dirs import check_output_dir, publish_dir

# ---------------------------------------------------------------------------
# Classes. Things first, then stuff (the order mmdet's panoptic heads expect);
# COCO category id = contiguous index + 1.
# ---------------------------------------------------------------------------
THING_CLASSES = ('person', 'car', 'boat', 'ball', 'buoy', 'dog', 'seal')
STUFF_CLASSES = ('sky', 'water', 'sand', 'grass', 'road', 'wall')
CLASSES = THING_CLASSES + STUFF_CLASSES
PALETTE = [(220, 20, 60), (0, 0, 142), (0, 80, 100), (255, 160, 0), (250, 0, 30),
           (165, 42, 42), (100, 170, 30), (70, 130, 180), (0, 60, 200),
           (220, 190, 120), (60, 160, 60), (128, 64, 128), (150, 150, 150)]
IGNORE_INDEX = 255

SYNTHETIC_METAINFO = dict(
    classes=CLASSES, thing_classes=THING_CLASSES, stuff_classes=STUFF_CLASSES,
    palette=PALETTE)

FORMAT_VERSION = 1
SPLITS = ('train', 'val')
SYNTHETIC_DATASET = 'synthetic panoptic dataset'  # the ``what`` of its output record

_LABEL = {name: i for i, name in enumerate(CLASSES)}

# Stuff appearance: base RGB colour and texture strength.
_STUFF_COLOUR = {
    'sky': (135, 185, 235), 'water': (40, 95, 160), 'sand': (215, 195, 140),
    'grass': (70, 150, 60), 'road': (95, 95, 100), 'wall': (175, 120, 95)}
_STUFF_TEXTURE = {'sky': 6, 'water': 14, 'sand': 12, 'grass': 18, 'road': 8, 'wall': 10}

# Things sharing a generator and palette are visually ambiguous by design.
_SHAPE_OF = {'person': 'person', 'car': 'vehicle', 'boat': 'vehicle',
             'ball': 'disc', 'buoy': 'disc', 'dog': 'animal', 'seal': 'animal'}
# The look-alike pairs: the object alone does not tell them apart, the scene does.
LOOK_ALIKE_PAIRS = (('car', 'boat'), ('ball', 'buoy'), ('dog', 'seal'))
_THING_PALETTE = {
    'person': [(200, 60, 60), (60, 60, 200), (230, 200, 60), (40, 40, 40)],
    'vehicle': [(200, 30, 30), (30, 60, 190), (235, 215, 40), (240, 240, 240)],
    'disc': [(250, 120, 20), (230, 30, 30), (245, 245, 245)],
    'animal': [(110, 80, 50), (70, 70, 70), (160, 130, 100)]}


@dataclass(frozen=True)
class SceneType:
    """A scene: stuff bands top to bottom and the things it may contain.

    ``bands`` are (stuff class, relative height) from top to bottom; ``things``
    maps a thing class to (the stuff it stands on, relative frequency); ``streaks``
    (stuff class, angle in degrees, 0 = horizontal) draws that band with parallel light
    and dark stripes at about that angle; ``landmark`` (stuff class, glyph set) paints one
    glyph of that set (:func:`landmark_glyphs`), drawn uniformly, on that band.
    """
    name: str
    bands: Tuple[Tuple[str, float], ...]
    things: Dict[str, Tuple[str, float]]
    streaks: Optional[Tuple[str, float]] = None
    landmark: Optional[Tuple[str, int]] = None


SCENE_TYPES = (
    SceneType('coast', (('sky', 0.35), ('water', 0.35), ('sand', 0.30)),
              {'boat': ('water', 3.), 'buoy': ('water', 2.), 'seal': ('sand', 2.),
               'person': ('sand', 2.)}),
    SceneType('meadow', (('sky', 0.45), ('grass', 0.55)),
              {'ball': ('grass', 3.), 'dog': ('grass', 3.), 'person': ('grass', 2.)}),
    SceneType('street', (('wall', 0.45), ('road', 0.55)),
              {'car': ('road', 4.), 'person': ('road', 2.), 'dog': ('road', 1.)}),
    SceneType('lake', (('sky', 0.25), ('grass', 0.15), ('water', 0.60)),
              {'boat': ('water', 3.), 'buoy': ('water', 3.), 'seal': ('water', 1.)}),
)


# Data variants (issue 25): the scene types a variant draws from. On the bundled set every
# look-alike is decided by the stuff it stands on, so a detector reads the twin from the pixels
# next to the object. ``shared_support`` moves that decision off the object's neighbourhood
# without removing it from the image: at a lake, buoys and seals stand on a larger grass band,
# where a meadow has balls and dogs, so a disc or an animal on grass is told apart only by the
# water elsewhere in the image. ``sky_texture`` leaves a single cue: meadow and lake have the
# same bands (sky over grass) and the same thing frequencies (the twins' classes swapped), and
# only the sky's stripes, horizontal in a meadow and vertical at a lake, tell them apart
# (not its colour: the stand-in encoder is trained to ignore tints).
_SKY_TEXTURE_THINGS = (('grass', 3.), ('grass', 3.), ('grass', 2.))
SCENE_VARIANTS = {
    'bundled': SCENE_TYPES,
    'shared_support': SCENE_TYPES[:3] + (
        SceneType('lake', (('sky', 0.25), ('grass', 0.40), ('water', 0.35)),
                  {'boat': ('water', 3.), 'buoy': ('grass', 3.), 'seal': ('grass', 1.)}),),
    'sky_texture': (
        SCENE_TYPES[0],
        SceneType('meadow', SCENE_TYPES[1].bands,
                  dict(zip(('ball', 'dog', 'person'), _SKY_TEXTURE_THINGS)),
                  streaks=('sky', 0.)),
        SCENE_TYPES[2],
        SceneType('lake', SCENE_TYPES[1].bands,
                  dict(zip(('buoy', 'seal', 'person'), _SKY_TEXTURE_THINGS)),
                  streaks=('sky', 90.))),
}
# 'landmarks' makes the scene a matter of knowledge rather than of what the pixels show:
# meadow and lake look alike (the same bands, no stripes, the twins' classes swapped), and
# each carries a landmark in its sky, one of LANDMARK_SET_SIZE glyphs of its own set; which
# glyph belongs to which scene is arbitrary, so a detector can only memorise the glyphs its
# labelled images show, while an encoder trained on a large captioned pool can know them all
# (as CLIP knows which landmark stands by a lake)
SCENE_VARIANTS['landmarks'] = (
    SCENE_TYPES[0],
    SceneType('meadow', SCENE_TYPES[1].bands,
              dict(zip(('ball', 'dog', 'person'), _SKY_TEXTURE_THINGS)), landmark=('sky', 1)),
    SCENE_TYPES[2],
    SceneType('lake', SCENE_TYPES[1].bands,
              dict(zip(('buoy', 'seal', 'person'), _SKY_TEXTURE_THINGS)), landmark=('sky', 0)))
# the glyphs: LANDMARK_GRID x LANDMARK_GRID cells of LANDMARK_CELL (of a 128-px image, scaled
# with the image) dark or light, LANDMARK_SETS sets drawn once from LANDMARK_SEED
LANDMARK_SETS, LANDMARK_SET_SIZE, LANDMARK_GRID, LANDMARK_CELL = 2, 32, 3, 6
LANDMARK_SEED = 2025
LANDMARK_DARK, LANDMARK_LIGHT = (25., 25., 25.), (245., 245., 245.)


@lru_cache(maxsize=1)
def landmark_glyphs() -> np.ndarray:
    """(LANDMARK_SETS, LANDMARK_SET_SIZE, LANDMARK_GRID, LANDMARK_GRID) bool, True = dark;
    drawn once per process and read-only (every landmark image indexes the same table).

    Every glyph differs from every other glyph and from every other glyph's mirror image (a
    horizontal flip, the training augmentation, never turns one scene's landmark into
    another's), and has at least 2 dark and 2 light cells (always a visible pattern)."""
    rng = np.random.default_rng(LANDMARK_SEED)
    taken, glyphs = set(), []
    while len(glyphs) < LANDMARK_SETS * LANDMARK_SET_SIZE:
        glyph = rng.random((LANDMARK_GRID, LANDMARK_GRID)) < 0.5
        key, mirror = glyph.tobytes(), glyph[:, ::-1].tobytes()
        if not 2 <= glyph.sum() <= glyph.size - 2 or key in taken or mirror in taken:
            continue
        taken.update((key, mirror))
        glyphs.append(glyph)
    table = np.stack(glyphs).reshape(LANDMARK_SETS, LANDMARK_SET_SIZE, LANDMARK_GRID,
                                     LANDMARK_GRID)
    table.setflags(write=False)
    return table


def _paint_landmark(rng: np.random.Generator, image: np.ndarray, region: np.ndarray,
                    glyph_set: int) -> None:
    """Paint a glyph of ``glyph_set``, drawn uniformly, where it fits inside ``region``
    (its rows above the region's lowest top-free row: the band is a top band)."""
    h, w = region.shape
    cell = max(2, round(LANDMARK_CELL * min(h, w) / 128))
    side = LANDMARK_GRID * cell
    glyph = landmark_glyphs()[glyph_set, rng.integers(LANDMARK_SET_SIZE)]
    full_rows = np.nonzero(region.all(axis=1))[0]  # rows the band covers at every column
    bottom = int(full_rows.max()) + 1 if len(full_rows) else side + 1
    top = int(rng.integers(1, max(2, bottom - side)))
    left = int(rng.integers(1, w - side))
    cells = np.kron(glyph, np.ones((cell, cell), bool))
    image[top:top + side, left:left + side] = np.where(
        cells[..., None], np.float32(LANDMARK_DARK), np.float32(LANDMARK_LIGHT))


# the stripes of ``SceneType.streaks``: amplitude (0-255 scale), period range in pixels and
# the angle's jitter in degrees
STREAK_AMPLITUDE, STREAK_PERIOD, STREAK_JITTER = 10.0, (6.0, 10.0), 15.0


def categories() -> List[dict]:
    """COCO panoptic ``categories`` (things then stuff, ids 1..N)."""
    return [
        dict(id=i + 1, name=name, supercategory='thing' if name in THING_CLASSES else 'stuff',
             isthing=int(name in THING_CLASSES), color=list(PALETTE[i]))
        for i, name in enumerate(CLASSES)
    ]


def id2rgb(id_map: np.ndarray) -> np.ndarray:
    """(H, W) int segment ids -> (H, W, 3) uint8 in COCO's RGB id encoding."""
    id_map = id_map.astype(np.int64)
    return np.stack([id_map % 256, id_map // 256 % 256, id_map // 65536 % 256],
                    axis=-1).astype(np.uint8)


# ---------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] of shape (h, w)."""
    grid = rng.uniform(-1, 1, size=(cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _stripes(rng: np.random.Generator, h: int, w: int, angle: float) -> np.ndarray:
    """(h, w) parallel stripes at ``angle`` degrees (0 = horizontal) +- STREAK_JITTER, a
    random period in STREAK_PERIOD and phase, amplitude STREAK_AMPLITUDE."""
    theta = np.deg2rad(angle + rng.uniform(-STREAK_JITTER, STREAK_JITTER))
    period = rng.uniform(*STREAK_PERIOD)
    phase = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[:h, :w].astype(np.float32)
    # the wave runs across the stripes: along (-sin, cos) of their direction
    across = -x * np.sin(theta) + y * np.cos(theta)
    return (STREAK_AMPLITUDE * np.sin(2 * np.pi * across / period + phase)).astype(np.float32)


def _wavy_boundaries(rng: np.random.Generator, bands, h: int, w: int) -> np.ndarray:
    """Per column y-coordinates of the boundaries between stuff bands, (len(bands)-1, w)."""
    fractions = np.array([f for _, f in bands], dtype=np.float64)
    fractions = fractions * rng.uniform(0.75, 1.25, size=len(fractions))
    cuts = np.cumsum(fractions / fractions.sum())[:-1]
    x = np.arange(w) / w
    ys = []
    for cut in cuts:
        amp = rng.uniform(0.0, 0.04)
        freq = rng.uniform(1.0, 4.0)
        phase = rng.uniform(0, 2 * np.pi)
        ys.append((cut + amp * np.sin(2 * np.pi * freq * x + phase)) * h)
    return np.sort(np.stack(ys), axis=0) if ys else np.zeros((0, w))


def _thing_polygon(shape: str, rng: np.random.Generator, cx: float, bottom: float,
                   size: float) -> List[np.ndarray]:
    """Polygons (int32 (K, 2) x/y) of one thing standing at (cx, bottom)."""
    s = size
    flip = rng.random() < 0.5

    def ellipse(x, y, ax, ay, a0=0, a1=360):
        pts = cv2.ellipse2Poly((int(round(x)), int(round(y))),
                               (max(1, int(round(ax))), max(1, int(round(ay)))), 0, a0, a1, 15)
        return pts.astype(np.int32)

    if shape == 'person':
        body = ellipse(cx, bottom - 0.4 * s, 0.16 * s, 0.4 * s)
        head = ellipse(cx, bottom - 0.92 * s, 0.12 * s, 0.12 * s)
        return [body, head]
    if shape == 'vehicle':
        w, hgt = 1.0 * s, 0.35 * s
        body = np.array([[cx - w / 2, bottom - hgt], [cx + w / 2, bottom - hgt],
                         [cx + 0.42 * w, bottom], [cx - 0.42 * w, bottom]])
        top_off = 0.12 * w if flip else -0.12 * w
        cabin = np.array([[cx - 0.22 * w + top_off, bottom - 1.8 * hgt],
                          [cx + 0.22 * w + top_off, bottom - 1.8 * hgt],
                          [cx + 0.3 * w + top_off, bottom - hgt],
                          [cx - 0.3 * w + top_off, bottom - hgt]])
        return [np.round(body).astype(np.int32), np.round(cabin).astype(np.int32)]
    if shape == 'disc':
        r = 0.3 * s
        return [ellipse(cx, bottom - r, r, r)]
    if shape == 'animal':
        direction = -1 if flip else 1
        body = ellipse(cx, bottom - 0.22 * s, 0.42 * s, 0.2 * s)
        head = ellipse(cx + direction * 0.42 * s, bottom - 0.42 * s, 0.15 * s, 0.13 * s)
        return [body, head]
    raise ValueError(f'unknown thing shape {shape!r}')


@dataclass
class _Segment:
    segment_id: int
    label: int
    mask: np.ndarray


def render_image(rng: np.random.Generator, height: int, width: int, min_area: int = 12,
                 scene_types: Sequence[SceneType] = SCENE_TYPES
                 ) -> Tuple[np.ndarray, np.ndarray, List[_Segment], str]:
    """Draw one scene of one of ``scene_types``.

    Returns:
        image (H, W, 3) uint8 RGB, segment id map (H, W) int32 (0 = void),
        the list of segments, and the scene type name.
    """
    scene = scene_types[rng.integers(len(scene_types))]
    h, w = height, width
    stuff_label = np.empty((h, w), dtype=np.int32)
    boundaries = _wavy_boundaries(rng, scene.bands, h, w)
    rows = np.arange(h)[:, None]
    band_index = (rows >= boundaries[:, None, :]).sum(axis=0) if len(boundaries) else \
        np.zeros((h, w), dtype=np.int64)
    image = np.empty((h, w, 3), dtype=np.float32)
    tint = rng.uniform(-20, 20, size=3)
    for b, (stuff, _) in enumerate(scene.bands):
        region = band_index == b
        stuff_label[region] = _LABEL[stuff]
        colour = np.array(_STUFF_COLOUR[stuff], np.float32) + tint
        tex = _STUFF_TEXTURE[stuff]
        layer = colour[None, None] + tex * _smooth_noise(rng, h, w, 6)[..., None] \
            + 0.5 * tex * rng.standard_normal((h, w, 1)).astype(np.float32)
        # drawn only for a scene with streaks: every other scene's random stream is unchanged
        if scene.streaks and scene.streaks[0] == stuff:
            layer = layer + _stripes(rng, h, w, scene.streaks[1])[..., None]
        image[region] = layer[region]
        # drawn only for a scene with a landmark: every other scene's random stream is unchanged
        if scene.landmark and scene.landmark[0] == stuff:
            _paint_landmark(rng, image, region, scene.landmark[1])

    # Things: sampled from the scene's list, standing on their supporting stuff.
    names = list(scene.things)
    freq = np.array([scene.things[n][1] for n in names])
    num_things = int(rng.integers(1, 7))
    placed = []
    for _ in range(num_things):
        name = names[rng.choice(len(names), p=freq / freq.sum())]
        support = _LABEL[scene.things[name][0]]
        ys, xs = np.nonzero(stuff_label == support)
        if len(ys) == 0:
            continue
        k = rng.integers(len(ys))
        bottom, cx = float(ys[k]), float(xs[k])
        # Perspective: things lower in the image are larger (closer).
        depth = bottom / h
        size = min(h, w) * rng.uniform(0.12, 0.22) * (0.6 + 0.9 * depth)
        placed.append((bottom, name, cx, size))
    placed.sort(key=lambda p: p[0])  # far to near: nearer things occlude farther ones

    id_map = np.zeros((h, w), dtype=np.int32)
    thing_label = np.full((h, w), -1, dtype=np.int32)
    instance_map = np.zeros((h, w), dtype=np.int32)
    for inst, (bottom, name, cx, size) in enumerate(placed, start=1):
        shape = _SHAPE_OF[name]
        polys = _thing_polygon(shape, rng, cx, bottom, size)
        mask = np.zeros((h, w), dtype=np.uint8)
        cv2.fillPoly(mask, polys, 1)
        colours = _THING_PALETTE[shape]
        colour = np.array(colours[rng.integers(len(colours))], np.float32)
        shade = 1.0 + 0.15 * _smooth_noise(rng, h, w, 3)[..., None]
        m = mask.astype(bool)
        image[m] = (colour[None] * shade[m] + 6 * rng.standard_normal((int(m.sum()), 3)))
        # A darker outline helps the eye, not the label.
        cv2.polylines(image, polys, True, tuple(float(c) * 0.6 for c in colour), 1)
        instance_map[m] = inst
        thing_label[m] = _LABEL[name]

    segments: List[_Segment] = []
    next_id = 1
    for inst in range(1, len(placed) + 1):
        m = instance_map == inst
        if m.sum() < min_area:  # (almost) fully occluded: remnants become void, as in COCO
            continue
        segments.append(_Segment(next_id, int(thing_label[m][0]), m))
        id_map[m] = next_id
        next_id += 1
    for stuff in dict.fromkeys(s for s, _ in scene.bands):
        m = (stuff_label == _LABEL[stuff]) & (instance_map == 0)
        if m.sum() == 0:
            continue
        segments.append(_Segment(next_id, _LABEL[stuff], m))
        id_map[m] = next_id
        next_id += 1

    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, id_map, segments, scene.name


def _bbox(mask: np.ndarray) -> List[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1)]


def _write_split(out: str, split: str, split_index: int, num_images: int, seed: int,
                 height: int, width: int, first_image_id: int, progress: bool,
                 scene_types: Sequence[SceneType] = SCENE_TYPES) -> Dict[str, int]:
    from pycocotools import mask as mask_utils

    img_dir = osp.join(out, split)
    pan_dir = osp.join(out, 'annotations', f'panoptic_{split}')
    sem_dir = osp.join(out, 'annotations', f'semantic_{split}')
    for d in (img_dir, pan_dir, sem_dir):
        os.makedirs(d, exist_ok=True)

    images, pan_anns, ins_anns = [], [], []
    scene_counts: Dict[str, int] = {}
    ann_id = 1
    iterator = range(num_images)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc=f'synthetic {split}', unit='img')
    for i in iterator:
        image_id = first_image_id + i
        rng = np.random.default_rng([seed, split_index, i])
        image, id_map, segments, scene = render_image(rng, height, width,
                                                      scene_types=scene_types)
        scene_counts[scene] = scene_counts.get(scene, 0) + 1
        stem = f'{image_id:012d}'
        cv2.imwrite(osp.join(img_dir, stem + '.jpg'), image[..., ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(osp.join(pan_dir, stem + '.png'), id2rgb(id_map)[..., ::-1])
        semantic = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
        segments_info = []
        for seg in segments:
            semantic[seg.mask] = seg.label
            is_thing = CLASSES[seg.label] in THING_CLASSES
            info = dict(id=seg.segment_id, category_id=seg.label + 1, iscrowd=0,
                        bbox=_bbox(seg.mask), area=int(seg.mask.sum()))
            segments_info.append(info)
            if is_thing:
                rle = mask_utils.encode(np.asfortranarray(seg.mask.astype(np.uint8)))
                rle['counts'] = rle['counts'].decode('ascii')
                ins_anns.append(dict(id=ann_id, image_id=image_id, category_id=seg.label + 1,
                                     segmentation=rle, area=info['area'], bbox=info['bbox'],
                                     iscrowd=0))
                ann_id += 1
        cv2.imwrite(osp.join(sem_dir, stem + '.png'), semantic)
        images.append(dict(id=image_id, file_name=stem + '.jpg', height=height, width=width,
                           scene=scene))
        pan_anns.append(dict(image_id=image_id, file_name=stem + '.png',
                             segments_info=segments_info))

    cats = categories()
    info = dict(description='mmmaps synthetic panoptic', version=str(FORMAT_VERSION))
    panoptic = dict(info=info, licenses=[], images=images, annotations=pan_anns,
                    categories=cats)
    instances = dict(info=info, licenses=[], images=images, annotations=ins_anns,
                     categories=[c for c in cats if c['isthing']])
    with open(osp.join(out, 'annotations', f'panoptic_{split}.json'), 'w') as f:
        json.dump(panoptic, f)
    with open(osp.join(out, 'annotations', f'instances_{split}.json'), 'w') as f:
        json.dump(instances, f)
    return scene_counts


def generate_synthetic_panoptic(out: str, num_train: int = 200, num_val: int = 50,
                                seed: int = 0, size: Sequence[int] = (128, 128),
                                force: bool = False, progress: bool = True,
                                variant: str = 'bundled') -> dict:
    """Write the dataset to ``out`` (atomically: built next to it, then renamed).

    ``variant`` names the scene types drawn from (:data:`SCENE_VARIANTS`); ``'bundled'``
    is the dataset every config and test uses.

    If ``out`` already holds a dataset generated with the same parameters it is
    kept as is, unless ``force``. A dataset of other parameters is only replaced
    with ``force``; anything but an empty folder or a dataset written here (its record
    lists every file: nothing added or edited, at any depth) is never replaced.

    Raises:
        OutputOwnershipError: ``out`` cannot or may not (without ``force``) be replaced.

    Returns:
        dict: the generation parameters and per-split scene counts (also saved as
        ``out/synthetic_meta.json``).
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train and num_val must be >= 1, got {num_train}, {num_val}')
    height, width = (int(size[0]), int(size[1]))
    if height < 32 or width < 32:
        raise ValueError(f'size must be at least 32x32, got {height}x{width}')
    if variant not in SCENE_VARIANTS:
        raise ValueError(f'unknown synthetic variant {variant!r}: expected one of '
                         f'{sorted(SCENE_VARIANTS)}')
    params = dict(format_version=FORMAT_VERSION, num_train=num_train, num_val=num_val,
                  seed=seed, height=height, width=width)
    if variant != 'bundled':  # the bundled set's record stays what it was
        params['variant'] = variant
    meta_file = osp.join(out, 'synthetic_meta.json')
    if osp.isfile(meta_file) and not force:
        with open(meta_file) as f:
            existing = json.load(f)
        if existing.get('params') == params:
            existing['reused'] = True
            return existing

    def check_out():
        return check_output_dir(
            out, SYNTHETIC_DATASET, force, legacy_markers=('synthetic_meta.json',),
            force_hint='pass --force (force=True) to replace it with these parameters')

    check_out()
    parent = osp.dirname(osp.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.' + osp.basename(osp.abspath(out)) + '.partial-',
                           dir=parent)
    try:
        scenes = {}
        first_id = 1
        for split_index, (split, n) in enumerate(zip(SPLITS, (num_train, num_val))):
            scenes[split] = _write_split(tmp, split, split_index, n, seed, height, width,
                                         first_id, progress, SCENE_VARIANTS[variant])
            first_id += n
        meta = dict(params=params, scene_counts=scenes, classes=list(CLASSES),
                    thing_classes=list(THING_CLASSES), stuff_classes=list(STUFF_CLASSES))
        with open(osp.join(tmp, 'synthetic_meta.json'), 'w') as f:
            json.dump(meta, f, indent=2)
        # checks ``out`` again: it may have changed while the dataset was generated
        publish_dir(tmp, out, SYNTHETIC_DATASET, legacy_markers=('synthetic_meta.json',))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta['reused'] = False
    return meta
