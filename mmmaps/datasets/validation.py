"""Check a COCO-panoptic split (annotation JSON + panoptic PNGs + images) before use.

Every problem names the file, the image id and what was expected. Strict by
default (:func:`check_panoptic_split` raises :class:`DatasetValidationError`);
with ``skip_invalid=True`` the images with problems are dropped from the
annotations instead, and a JSON report lists exactly what was dropped.

Checks (``check`` field of a problem):

- ``duplicate_image_id``: two ``images`` entries share an id (mmdet would merge
  their annotations onto one PNG); every entry of that id is dropped.
- ``duplicate_file_name``: two ``images`` entries share a ``file_name``.
- ``duplicate_annotation``: two ``annotations`` share an ``image_id``.
- ``annotation_without_image``: an annotation's ``image_id`` has no image entry.
- ``missing_annotation``: an image has no panoptic annotation.
- ``unknown_category``: a segment's ``category_id`` is not in ``categories``
  (or its name is not one of the config's classes).
- ``duplicate_segment_id``: a segment id listed twice in one annotation.
- ``missing_image`` / ``missing_png``: the file cannot be read.
- ``degenerate_image``: a side below :data:`MIN_IMAGE_SIDE` pixels.
- ``size_mismatch``: image file size differs from the JSON ``width``/``height``,
  or the PNG size differs from the image size.
- ``png_encoding``: the PNG is not 8-bit RGB (panopticapi's id = R + 256 G +
  256^2 B encoding), e.g. 16-bit grey ids or a palette PNG.
- ``segment_not_in_png``: a listed segment id has no pixel in the PNG.
- ``unlisted_png_id``: a non-zero id in the PNG is not listed (0 is VOID).
"""
import copy
import json
import os
import os.path as osp
from collections import Counter, defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

#: Images with a side shorter than this (pixels) are degenerate: no encoder or
#: augmentation pipeline can resize or crop them meaningfully.
MIN_IMAGE_SIDE = 2
#: Problems quoted in an error message (the total is always given).
MAX_LISTED = 10


class DatasetValidationError(ValueError):
    """A dataset split has problems; ``problems`` lists them all."""

    def __init__(self, message: str, problems: List[dict]):
        super().__init__(message)
        self.problems = problems


def split_paths(dataset_cfg: dict) -> Dict[str, str]:
    """``ann_file``, ``img_dir`` and ``seg_dir`` of a dataset config, joined with
    ``data_root`` the way mmengine's ``BaseDataset`` joins them."""
    root = dataset_cfg.get('data_root') or ''
    prefix = dataset_cfg.get('data_prefix') or {}

    def join(path):
        return path if not root or osp.isabs(path) else osp.join(root, path)

    if not dataset_cfg.get('ann_file'):
        raise ValueError('the dataset config has no ann_file')
    if 'seg' not in prefix:
        raise ValueError(f'the dataset of {dataset_cfg["ann_file"]} has no panoptic PNG folder '
                         '(data_prefix.seg)')
    return dict(ann_file=join(dataset_cfg['ann_file']), img_dir=join(prefix.get('img', '')),
                seg_dir=join(prefix['seg']))


def dataset_classes(dataset_cfg: dict) -> Optional[Sequence[str]]:
    """The class names the dataset will label: ``metainfo.classes`` of the config,
    else the dataset type's default ``METAINFO`` (mmdet maps other categories nowhere)."""
    classes = (dataset_cfg.get('metainfo') or {}).get('classes')
    if classes is None:
        from mmdet.registry import DATASETS
        from mmdet.utils import register_all_modules
        register_all_modules(init_default_scope=False)
        dataset_type = DATASETS.get(dataset_cfg.get('type'))
        classes = getattr(dataset_type, 'METAINFO', {}).get('classes')
    return classes


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_COLOUR_TYPES = {0: 'grey', 2: 'RGB', 3: 'palette', 4: 'grey+alpha', 6: 'RGBA'}


def _png_format(path: str) -> Optional[str]:
    """'8-bit RGB', '16-bit grey', ... from the PNG header (PIL reads 16-bit RGB as
    8-bit 'RGB', hiding it), or None for a file that is not a PNG."""
    with open(path, 'rb') as f:
        head = f.read(26)
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE):
        return None
    return f'{head[24]}-bit {_PNG_COLOUR_TYPES.get(head[25], f"colour type {head[25]}")}'


def _problem(check, image_id, file, message):
    return dict(check=check, image_id=image_id, file=file, message=message)


def _check_files(image: dict, ann: dict, img_dir: str, seg_dir: str, known: set,
                 min_side: int) -> List[dict]:
    """Problems of one image and its annotation (image file, PNG, segments)."""
    image_id = image['id']
    img_path = osp.join(img_dir, image['file_name'])
    png_path = osp.join(seg_dir, ann['file_name'])
    out = []
    listed = [s['id'] for s in ann.get('segments_info', [])]
    for seg in ann.get('segments_info', []):
        if seg.get('category_id') not in known:
            out.append(_problem('unknown_category', image_id, png_path,
                                f'segment {seg["id"]} has category_id {seg.get("category_id")}, '
                                f'expected one of the categories ({len(known)} ids)'))
    dup = sorted(i for i, n in Counter(listed).items() if n > 1)
    if dup:
        out.append(_problem('duplicate_segment_id', image_id, png_path,
                            f'segment ids {dup} are listed more than once, expected unique ids'))
    try:
        with Image.open(img_path) as im:
            size = im.size
    except (OSError, ValueError) as exc:
        return out + [_problem('missing_image', image_id, img_path,
                               f'cannot read the image ({exc.__class__.__name__}: {exc})')]
    if min(size) < min_side:
        out.append(_problem('degenerate_image', image_id, img_path,
                            f'image is {size[0]}x{size[1]} px, expected at least {min_side} px '
                            'a side'))
    if (image.get('width'), image.get('height')) != size:
        out.append(_problem('size_mismatch', image_id, img_path,
                            f'image is {size[0]}x{size[1]} px, the JSON says '
                            f'{image.get("width")}x{image.get("height")}'))
    try:
        with Image.open(png_path) as png:
            png_format = _png_format(png_path)
            png_size = png.size
            pan = np.asarray(png) if png_format == '8-bit RGB' else None
    except (OSError, ValueError) as exc:
        return out + [_problem('missing_png', image_id, png_path,
                               f'cannot read the panoptic PNG ({exc.__class__.__name__}: {exc})')]
    if pan is None:
        return out + [_problem('png_encoding', image_id, png_path,
                               f'panoptic PNG is {png_format or "not a PNG file"}, expected '
                               '8-bit RGB with id = R + 256 G + 256^2 B (panopticapi id2rgb)')]
    if png_size != size:
        out.append(_problem('size_mismatch', image_id, png_path,
                            f'panoptic PNG is {png_size[0]}x{png_size[1]} px, its image '
                            f'{image["file_name"]} is {size[0]}x{size[1]}'))
    pan = pan.astype(np.int64)
    present = set(np.unique(pan[..., 0] + 256 * pan[..., 1] + 65536 * pan[..., 2]).tolist())
    absent = [i for i in listed if i not in present]
    if absent:
        out.append(_problem('segment_not_in_png', image_id, png_path,
                            f'segments {absent} are listed in the JSON but have no pixel in '
                            'the PNG'))
    unlisted = sorted(present - set(listed) - {0})
    if unlisted:
        out.append(_problem('unlisted_png_id', image_id, png_path,
                            f'ids {unlisted} are in the PNG but not listed in segments_info '
                            '(expected only listed ids and 0 = VOID)'))
    return out


def validate_panoptic(panoptic: dict, ann_file: str, img_dir: str, seg_dir: str,
                      classes: Optional[Sequence[str]] = None,
                      min_side: int = MIN_IMAGE_SIDE) -> List[dict]:
    """All problems of a loaded COCO-panoptic JSON (see the module docstring).

    Args:
        panoptic (dict): The loaded annotation file.
        ann_file (str): Its path (named in the problems about the JSON itself).
        img_dir (str): Folder of the images (``images[].file_name``).
        seg_dir (str): Folder of the panoptic PNGs (``annotations[].file_name``).
        classes (Sequence[str], optional): The config's class names; categories
            named otherwise count as unknown (mmdet has no label for them).
        min_side (int): Smallest accepted image side in pixels.

    Returns:
        list[dict]: Problems with ``check``, ``image_id``, ``file``, ``message``.
    """
    problems = []
    images = panoptic.get('images', [])
    anns = panoptic.get('annotations', [])
    known = {c['id'] for c in panoptic.get('categories', [])
             if classes is None or c.get('name') in classes}
    by_id, by_name = defaultdict(list), defaultdict(list)
    for image in images:
        by_id[image['id']].append(image)
        by_name[image['file_name']].append(image)
    for image_id, entries in by_id.items():
        if len(entries) > 1:
            problems.append(_problem(
                'duplicate_image_id', image_id, ann_file,
                f'image id {image_id} is used by {len(entries)} images '
                f'({", ".join(e["file_name"] for e in entries)}), expected unique ids'))
    for name, entries in by_name.items():
        if len(entries) > 1:
            for entry in entries:
                problems.append(_problem(
                    'duplicate_file_name', entry['id'], ann_file,
                    f'file {name} is listed by image ids {[e["id"] for e in entries]}, expected '
                    'one image entry per file'))
    anns_of = defaultdict(list)
    for ann in anns:
        anns_of[ann['image_id']].append(ann)
    for image_id, entries in anns_of.items():
        if image_id not in by_id:
            problems.append(_problem(
                'annotation_without_image', image_id, ann_file,
                f'annotation {entries[0].get("file_name")} has image_id {image_id}, which no '
                'image entry has'))
        elif len(entries) > 1:
            problems.append(_problem(
                'duplicate_annotation', image_id, ann_file,
                f'image id {image_id} has {len(entries)} panoptic annotations '
                f'({", ".join(e.get("file_name", "?") for e in entries)}), expected one'))
    for image in images:
        entries = anns_of.get(image['id'], [])
        if not entries:
            problems.append(_problem('missing_annotation', image['id'], ann_file,
                                     f'image {image["file_name"]} has no panoptic annotation, '
                                     'expected one'))
        elif len(entries) == 1 and len(by_id[image['id']]) == 1:
            problems += _check_files(image, entries[0], img_dir, seg_dir, known, min_side)
    return problems


def format_problems(problems: List[dict], ann_file: str, limit: int = MAX_LISTED) -> str:
    """A readable summary: the count per check and the first ``limit`` problems."""
    counts = Counter(p['check'] for p in problems)
    images = {p['image_id'] for p in problems}
    lines = [f'{ann_file}: {len(problems)} problems in {len(images)} images ('
             + ', '.join(f'{k}: {n}' for k, n in sorted(counts.items())) + ')']
    lines += [f'  [{p["check"]}] image id {p["image_id"]}, {p["file"]}: {p["message"]}'
              for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f'  ... and {len(problems) - limit} more')
    return '\n'.join(lines)


def drop_images(panoptic: dict, image_ids) -> dict:
    """A copy of ``panoptic`` without the images and annotations of ``image_ids``."""
    image_ids = set(image_ids)
    out = copy.copy(panoptic)
    out['images'] = [i for i in panoptic['images'] if i['id'] not in image_ids]
    out['annotations'] = [a for a in panoptic['annotations'] if a['image_id'] not in image_ids]
    return out


def validation_error(problems: List[dict], ann_file: str,
                     hint: str = 'Fix the data, or pass --skip-invalid-images to leave these '
                     'images out (listed in a report).') -> DatasetValidationError:
    """The error of a split with ``problems``: the summary of :func:`format_problems`, then
    what to do."""
    return DatasetValidationError(format_problems(problems, ann_file) + '\n' + hint, problems)


def check_panoptic_split(ann_file: str, img_dir: str, seg_dir: str,
                         classes: Optional[Sequence[str]] = None,
                         skip_invalid: bool = False, report_file: Optional[str] = None,
                         min_side: int = MIN_IMAGE_SIDE,
                         panoptic: Optional[dict] = None) -> dict:
    """Validate a split; raise on problems unless ``skip_invalid``.

    ``panoptic`` is the content of ``ann_file`` when the caller has read it already.

    Returns:
        dict: ``panoptic`` (the annotations without the dropped images),
        ``problems`` and ``dropped_image_ids`` (sorted). With problems and
        ``report_file``, the report (``ann_file``, ``problems``,
        ``dropped_image_ids``, ``dropped_files``) is written there.

    Raises:
        DatasetValidationError: problems were found and ``skip_invalid`` is False.
    """
    if panoptic is None:
        with open(ann_file) as f:
            panoptic = json.load(f)
    problems = validate_panoptic(panoptic, ann_file, img_dir, seg_dir, classes, min_side)
    if problems and not skip_invalid:
        raise validation_error(problems, ann_file)
    dropped = dropped_image_ids(problems)
    write_report(report_file, ann_file, panoptic, problems)
    return dict(panoptic=drop_images(panoptic, dropped), problems=problems,
                dropped_image_ids=dropped, num_images=len(panoptic.get('images', [])))


def dropped_image_ids(problems: List[dict]) -> list:
    """The sorted ids of the images that have ``problems`` (what ``skip_invalid`` drops)."""
    return sorted({p['image_id'] for p in problems},
                  key=lambda i: (not isinstance(i, int), i if isinstance(i, int) else str(i)))


def write_report(report_file: Optional[str], ann_file: str, panoptic: dict,
                 problems: List[dict]) -> None:
    """Write the report of the dropped images (``ann_file``, ``problems``,
    ``dropped_image_ids``, ``dropped_files``) to ``report_file`` (atomically); without
    problems remove an earlier report there, which would describe other data."""
    if not report_file:
        return
    if not problems:
        if osp.isfile(report_file):
            os.remove(report_file)
        return
    dropped = dropped_image_ids(problems)
    names, dropped_set = {}, set(dropped)
    for image in panoptic.get('images', []):
        if image['id'] in dropped_set:
            names.setdefault(str(image['id']), []).append(image['file_name'])
    from mmmaps.memory.storage import write_json
    write_json(report_file, dict(ann_file=osp.abspath(ann_file), num_problems=len(problems),
                                 dropped_image_ids=dropped, dropped_files=names,
                                 problems=problems))
