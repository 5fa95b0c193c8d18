"""Convert ADE20K and Cityscapes from their native formats to COCO panoptic.

One module per dataset (:mod:`.ade20k`, :mod:`.cityscapes`: the native format, the panoptic
map of an image, the split's file list) and the machinery both share (:mod:`.common`: segments,
PNG encoding, the staging folder and its publication).

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
"""
from .ade20k import (ADE20K_CLASSES, ADE20K_LABEL_IDS, ADE20K_METAINFO, ADE20K_PALETTE,
                     ADE20K_SPLITS, ADE20K_STUFF_IDS, ADE20K_THING_IDS, ade20k_output_names,
                     ade20k_panoptic_map, convert_ade20k)
from .cityscapes import (CITYSCAPES_METAINFO, CITYSCAPES_SPLITS, CITYSCAPES_STUFF,
                         CITYSCAPES_THINGS, cityscapes_output_names, cityscapes_panoptic_map,
                         convert_cityscapes)
from .common import CONVERTED_SPLIT, LABEL_DIVISOR, panoptic_categories

__all__ = [
    'ADE20K_CLASSES', 'ADE20K_PALETTE', 'ADE20K_THING_IDS', 'ADE20K_STUFF_IDS',
    'ADE20K_LABEL_IDS', 'ADE20K_METAINFO', 'ADE20K_SPLITS', 'ade20k_panoptic_map',
    'ade20k_output_names', 'convert_ade20k', 'CITYSCAPES_THINGS', 'CITYSCAPES_STUFF',
    'CITYSCAPES_METAINFO', 'CITYSCAPES_SPLITS', 'cityscapes_panoptic_map',
    'cityscapes_output_names', 'convert_cityscapes', 'LABEL_DIVISOR', 'CONVERTED_SPLIT',
    'panoptic_categories'
]
