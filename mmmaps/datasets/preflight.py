"""What a run checks before it starts: its data (training) and its class counts (every tool).

- :func:`check_run_datasets` (``tools/train.py``): the train split, and the val split when
  the config has a val loop, pass :func:`~mmmaps.datasets.validation.check_panoptic_split`,
  the check ``tools/analysis/check_dataset.py`` and ``tools/build_memory.py`` run. Its result
  is cached by the identity of the annotation file (path, size, mtime_ns, sha256) and of
  every image and PNG it lists (path, size, mtime_ns), so a restart costs seconds; ranks of
  one launch take turns under a file lock, the first validates, the others read its result.
  With ``skip_invalid`` the bad training images are left out: the dataset reads a filtered
  copy of its annotation file (in the cache), the dropped images are listed in
  ``WORK_DIR/<dataset key>.invalid_images.json``. A val split is never filtered (its
  evaluators read the annotation file themselves).
- :func:`check_class_counts` (train, test, demo): every ``num_things_classes`` /
  ``num_stuff_classes`` of the model config equals the dataset's thing / stuff class count.
"""
import fcntl
import hashlib
import json
import os
import os.path as osp
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from .validation import (MIN_IMAGE_SIDE, DatasetValidationError, check_panoptic_split,
                         drop_images, dropped_image_ids, split_paths, validation_error,
                         write_report)

#: Bump when the checks of :mod:`mmmaps.datasets.validation` change (invalidates the cache).
CHECK_VERSION = 1
CLASS_KEYS = ('num_things_classes', 'num_stuff_classes')


class ClassCountError(ValueError):
    """The model's class counts are not the dataset's (config keys and counts named)."""


def dataset_check_cache() -> str:
    """``$MMMAPS_CACHE/dataset_checks`` (default ``~/.cache/mmmaps/dataset_checks``)."""
    cache = os.environ.get('MMMAPS_CACHE') or osp.join(osp.expanduser('~'), '.cache', 'mmmaps')
    return osp.join(cache, 'dataset_checks')


def leaf_datasets(dataset_cfg: dict, key: str) -> Iterator[Tuple[str, dict]]:
    """``(config key, dataset config)`` of every dataset a dataset config reads, through
    wrappers (``dataset=``: RepeatDataset, ClassBalancedDataset, ...) and ConcatDataset
    (``datasets=``). The configs are the config's own nodes (editing one edits the config)."""
    if isinstance(dataset_cfg.get('datasets'), (list, tuple)):
        for i, sub in enumerate(dataset_cfg['datasets']):
            yield from leaf_datasets(sub, f'{key}.datasets[{i}]')
    elif isinstance(dataset_cfg.get('dataset'), dict):
        yield from leaf_datasets(dataset_cfg['dataset'], f'{key}.dataset')
    else:
        yield key, dataset_cfg


def _dataset_type(dataset_cfg: dict):
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return DATASETS.get(dataset_cfg.get('type'))


def _is_coco_panoptic(dataset_cfg: dict) -> bool:
    from mmdet.datasets import CocoPanopticDataset
    dataset_type = _dataset_type(dataset_cfg)
    return isinstance(dataset_type, type) and issubclass(dataset_type, CocoPanopticDataset)


def _stat(path: str) -> list:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None, None]
    return [path, st.st_size, st.st_mtime_ns]


def split_identity(paths: dict, data: bytes, panoptic: dict,
                   classes: Optional[Sequence[str]], min_side: int) -> str:
    """sha256 over what the check reads: the annotation file (path, size, mtime_ns, sha256 of
    ``data``, its bytes), each listed image and PNG (path, size, mtime_ns), the settings."""
    ann = osp.abspath(paths['ann_file'])
    st = os.stat(ann)
    digest = hashlib.sha256(json.dumps(dict(
        version=CHECK_VERSION, ann_file=[ann, st.st_size, st.st_mtime_ns,
                                         hashlib.sha256(data).hexdigest()],
        img_dir=osp.abspath(paths['img_dir']), seg_dir=osp.abspath(paths['seg_dir']),
        classes=list(classes) if classes is not None else None, min_side=min_side)).encode())
    for what, folder in (('images', paths['img_dir']), ('annotations', paths['seg_dir'])):
        for entry in panoptic.get(what) or []:
            name = entry.get('file_name') if isinstance(entry, dict) else None
            if isinstance(name, str):
                digest.update(json.dumps(_stat(osp.join(folder, name))).encode())
    return digest.hexdigest()


@contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (released when the block or the process ends)."""
    with open(path, 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def checked_split(paths: dict, classes: Optional[Sequence[str]] = None,
                  min_side: int = MIN_IMAGE_SIDE, cache_dir: Optional[str] = None) -> dict:
    """:func:`check_panoptic_split` of ``paths`` (never raising on problems), cached.

    Returns:
        dict: ``panoptic`` (the annotation file's content), ``problems``,
        ``dropped_image_ids``, ``num_images``, ``identity`` (the cache key) and ``cached``
        (whether the result was read from the cache).
    """
    from mmmaps.memory.storage import write_json
    with open(paths['ann_file'], 'rb') as f:
        data = f.read()
    try:
        panoptic = json.loads(data)
    except ValueError as exc:
        raise DatasetValidationError(f'{paths["ann_file"]} is not JSON ({exc}); expected a '
                                     'COCO-panoptic annotation file', []) from None
    if not isinstance(panoptic, dict):
        raise DatasetValidationError(f'{paths["ann_file"]} holds a {type(panoptic).__name__}, '
                                     'expected a COCO-panoptic annotation object', [])
    identity = split_identity(paths, data, panoptic, classes, min_side)
    cache_dir = cache_dir or dataset_check_cache()
    os.makedirs(cache_dir, exist_ok=True)
    record_file = osp.join(cache_dir, identity + '.json')
    with _file_lock(record_file + '.lock'):  # the first rank checks, the others wait
        record = _read_record(record_file, identity)
        cached = record is not None
        if record is None:
            result = check_panoptic_split(**paths, classes=classes, skip_invalid=True,
                                          min_side=min_side, panoptic=panoptic)
            record = dict(version=CHECK_VERSION, identity=identity,
                          ann_file=osp.abspath(paths['ann_file']),
                          num_images=result['num_images'], problems=result['problems'])
            write_json(record_file, record)
    problems = record['problems']
    return dict(panoptic=panoptic, problems=problems, num_images=record['num_images'],
                dropped_image_ids=dropped_image_ids(problems), identity=identity,
                cached=cached)


def _read_record(path: str, identity: str) -> Optional[dict]:
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None  # none yet (or unreadable: checked again and rewritten)
    if not isinstance(record, dict) or record.get('identity') != identity or record.get(
            'version') != CHECK_VERSION or not isinstance(record.get('problems'), list):
        return None
    return record


def _filtered_copy(result: dict, cache_dir: str) -> str:
    """The annotation file without the dropped images, written once into the cache."""
    from mmmaps.memory.storage import write_json
    path = osp.join(cache_dir, result['identity'] + '.filtered.json')
    with _file_lock(path + '.lock'):
        if not osp.isfile(path):
            write_json(path, drop_images(result['panoptic'], result['dropped_image_ids']))
    return path


def check_run_datasets(cfg, skip_invalid: bool = False, work_dir: Optional[str] = None,
                       log: Optional[Callable[[str], None]] = None,
                       cache_dir: Optional[str] = None) -> List[dict]:
    """Validate the datasets a training run reads (see the module docstring).

    With ``skip_invalid`` the train datasets with bad images are pointed (in ``cfg``) at a
    filtered copy of their annotation file; the report goes to ``work_dir``.

    Returns:
        list[dict]: per dataset ``key``, ``ann_file``, ``num_images``, ``dropped`` (count),
        ``report`` (path or None), ``cached``.

    Raises:
        DatasetValidationError: a split has problems (and ``skip_invalid`` is off, or it is
            the val split), lists no image, or would be left without images.
    """
    from mmengine.logging import print_log
    log = log or (lambda msg: print_log(msg, logger='current'))
    cache_dir = cache_dir or dataset_check_cache()
    splits = ['train'] + (['val'] if cfg.get('val_cfg') and cfg.get('val_dataloader') else [])
    summary = []
    for split in splits:
        loader = cfg.get(f'{split}_dataloader') or {}
        if not isinstance(loader.get('dataset'), dict):
            raise DatasetValidationError(f'the config has no {split}_dataloader.dataset', [])
        for key, dataset in leaf_datasets(loader['dataset'], f'{split}_dataloader.dataset'):
            if not _is_coco_panoptic(dataset):
                log(f'{key}: a {dataset.get("type")}, not a COCO-panoptic dataset; its data '
                    'is not checked before the run')
                continue
            summary.append(_check_dataset(key, dataset, split, skip_invalid, work_dir,
                                          cache_dir, log))
    return summary


def _check_dataset(key: str, dataset: dict, split: str, skip_invalid: bool,
                   work_dir: Optional[str], cache_dir: str, log) -> dict:
    from .validation import dataset_classes
    try:
        paths = split_paths(dataset)
    except ValueError as exc:
        raise DatasetValidationError(f'{key}: {exc}', []) from None
    ann_file = paths['ann_file']
    if not osp.isfile(ann_file):
        raise FileNotFoundError(f'{key}.ann_file: {ann_file} does not exist (set '
                                f'{key}.data_root/ann_file)')
    result = checked_split(paths, classes=dataset_classes(dataset), cache_dir=cache_dir)
    num, problems = result['num_images'], result['problems']
    if num == 0:
        raise DatasetValidationError(f'{ann_file} ({key}) lists no images; expected at least '
                                     'one image with its panoptic annotation', [])
    info = dict(key=key, ann_file=ann_file, num_images=num, dropped=0, report=None,
                cached=result['cached'])
    if not problems:
        log(f'{key}: {ann_file}, {num} images, no problems'
            + (' (checked before, same files)' if result['cached'] else ''))
        return info
    if split != 'train':
        raise validation_error(problems, ann_file, hint=(
            f'Fix the data ({key}; tools/analysis/check_dataset.py CONFIG --split {split} '
            'lists every problem): --skip-invalid-images leaves out training images only, '
            'the val evaluators read every image of this annotation file.'))
    if not skip_invalid:
        raise validation_error(problems, ann_file, hint=(
            f'({key} reads it.) Fix the data, or pass --skip-invalid-images to train without '
            'these images (listed in a report in the work dir).'))
    dropped = result['dropped_image_ids']
    if len(dropped) >= num:
        raise validation_error(problems, ann_file, hint=(
            f'Every image of {ann_file} ({key}) has a problem: nothing is left to train on.'))
    report = None
    if work_dir:
        os.makedirs(work_dir, exist_ok=True)
        report = osp.join(work_dir, f'{key}.invalid_images.json')
        write_report(report, ann_file, result['panoptic'], problems)
    dataset['ann_file'] = _filtered_copy(result, cache_dir)
    log(f'--skip-invalid-images: {len(dropped)} of the {num} images of {ann_file} ({key}) '
        f'fail the dataset check and are left out of training (listed in '
        f'{report or "the problems above"}); the dataset reads {dataset["ann_file"]}')
    info.update(dropped=len(dropped), report=report)
    return info


# ------------------------------------------------------------------------- class counts
def _dataset_counts(dataset: dict, key: str) -> Tuple[Optional[int], Optional[int], int, str]:
    """(things, stuff, classes, where they come from) of a leaf dataset config; things and
    stuff are None when the config names classes without splitting them."""
    meta = dataset.get('metainfo') or {}
    if meta.get('classes') is not None:
        source = f'{key}.metainfo'
    else:
        dataset_type = _dataset_type(dataset)
        meta = getattr(dataset_type, 'METAINFO', None) or {}
        source = f'{getattr(dataset_type, "__name__", dataset.get("type"))}.METAINFO'
        if meta.get('classes') is None:
            return None, None, 0, source
    things, stuff = meta.get('thing_classes'), meta.get('stuff_classes')
    if things is None or stuff is None:
        return None, None, len(meta['classes']), source
    return len(things), len(stuff), len(meta['classes']), source


def check_class_counts(cfg, split: str) -> None:
    """Raise :class:`ClassCountError` when a ``num_things_classes``/``num_stuff_classes`` of
    ``cfg.model`` (at any depth: panoptic heads, fusion heads, bbox heads) is not the thing /
    stuff class count of ``{split}_dataloader``'s dataset(s) (their ``metainfo``, else the
    dataset type's ``METAINFO``). A metainfo without thing/stuff split is compared by the
    sum. Counts a config does not set are not compared."""
    loader = cfg.get(f'{split}_dataloader') or {}
    model = cfg.get('model') or {}
    heads = {}
    from ..utils.tool_utils import walk_config
    for key, value in walk_config(model, 'model'):
        parent, _, name = key.rpartition('.')
        if name in CLASS_KEYS and isinstance(value, int):
            heads.setdefault(parent, {})[name] = value
    if not heads or not isinstance(loader.get('dataset'), dict):
        return
    for key, dataset in leaf_datasets(loader['dataset'], f'{split}_dataloader.dataset'):
        things, stuff, total, source = _dataset_counts(dataset, key)
        if not total:
            continue
        for head, counts in heads.items():
            if things is not None:
                for name, expected, kind in (('num_things_classes', things, 'thing'),
                                             ('num_stuff_classes', stuff, 'stuff')):
                    if name in counts and counts[name] != expected:
                        raise ClassCountError(
                            f'{head}.{name} = {counts[name]}, but the dataset {key} has '
                            f'{expected} {kind} classes ({source}.{kind}_classes, {total} '
                            f'classes in all): set {head}.{name} = {expected} (and every '
                            'class count derived from it, e.g. loss_cls.class_weight), or '
                            'give the dataset the metainfo of the classes the model predicts')
            elif len(counts) == 2 and sum(counts.values()) != total:
                things_, stuff_ = counts['num_things_classes'], counts['num_stuff_classes']
                raise ClassCountError(
                    f'{head}.num_things_classes + num_stuff_classes = {things_} + {stuff_} = '
                    f'{things_ + stuff_}, but the dataset {key} has {total} classes '
                    f'({source}.classes): make them equal')
