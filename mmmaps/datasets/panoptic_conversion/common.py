"""The machinery both panoptic converters share (the output format is described in
:mod:`mmmaps.datasets.panoptic_conversion`): COCO panoptic categories, segments and their
entries, reading and checking the native maps, writing the RGB-encoded PNGs, and converting
one split into a hidden staging folder that is published (renamed into place) when complete.
"""
import json
import multiprocessing
import os
import os.path as osp
import shutil
import tempfile
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from mmmaps.utils.output_dirs import check_targets, read_record, write_record

LABEL_DIVISOR = 1000  # thing segment id = category id * 1000 + k


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


def segment_category(seg_id: int) -> int:
    """Category id of a segment id (``category * 1000 + k`` for things, else the category)."""
    return seg_id // LABEL_DIVISOR if seg_id >= LABEL_DIVISOR else seg_id


def panoptic_segments(pan: np.ndarray, category_of,
                      crowd_ids=()) -> List[Tuple[dict, np.ndarray]]:
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


def write_panoptic_png(path: str, pan: np.ndarray) -> None:
    """Write the id map ``pan`` as a PNG in panopticapi's RGB id encoding."""
    from panopticapi.utils import id2rgb
    os.makedirs(osp.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, id2rgb(pan)[..., ::-1]):
        raise OSError(f'could not write {path}')


def read_map(path: str, what: str) -> np.ndarray:
    """The native annotation map ``path`` as stored (``what`` names it in errors)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'{what} {path} does not exist')
    array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError(f'{what} {path} could not be read as an image')
    return array


def image_size(path: str) -> Tuple[int, int]:
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


def check_size(array: np.ndarray, size: Tuple[int, int], path: str, image: str) -> None:
    """Refuse a map ``path`` whose size is not its image's ``size`` (H, W)."""
    if tuple(array.shape[:2]) != tuple(size):
        raise ValueError(f'{path} is {array.shape[0]}x{array.shape[1]} but its image {image} '
                         f'is {size[0]}x{size[1]} (HxW)')


def require_dir(path: str, what: str, hint: str = '') -> None:
    """Refuse a missing input folder, naming it and pointing to data/README.md."""
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


def split_targets(names: Dict[str, str], with_instances: bool) -> List[str]:
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


def convert_split(tasks: list, worker, out_dir: str, names: Dict[str, str], categories,
                  info: dict, with_instances: bool, nproc: int, desc: str,
                  progress: bool) -> dict:
    """Run ``worker`` over ``tasks`` into a staging folder and publish the split.

    ``names``: ``png_dir``, ``panoptic_json`` and (optionally) ``instances_json``, relative to
    ``out_dir``. Returns the split's counts.
    """
    targets = split_targets(names, with_instances)
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


def segment_entries(image_id: int, file_name: str, segments, with_instances: bool,
                    thing_ids) -> Tuple[dict, List[dict], Dict[str, int]]:
    """The panoptic annotation of one image, its instance annotations (things, RLE masks,
    if ``with_instances``) and its segment counts (things, stuff, crowd)."""
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
