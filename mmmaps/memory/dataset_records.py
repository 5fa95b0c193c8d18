"""Read the images and panoptic annotations that a model config trains or tests on.

The memory is built from the very dataset entry of the config (``train_dataloader``
or ``val_dataloader``/``test_dataloader``), parsed by mmdet's
``CocoPanopticDataset`` so category labels are the model's contiguous labels.
"""
import copy
import json
import os.path as osp
import tempfile
from typing import List, Optional, Tuple

from mmengine.config import Config

from .storage import sha256_file

_WRAPPERS = ('RepeatDataset', 'ClassBalancedDataset', 'MultiImageMixDataset')


def dataset_cfg_of(cfg: Config, split: str) -> dict:
    """The (unwrapped) dataset config of ``split`` ('train', 'val' or 'test')."""
    key = f'{split}_dataloader'
    if key not in cfg or cfg[key] is None:
        raise KeyError(f'config has no {key!r}; cannot read the {split} images for the memory')
    dataset = copy.deepcopy(cfg[key]['dataset'])
    while dataset.get('type') in _WRAPPERS:
        dataset = copy.deepcopy(dataset['dataset'])
    if 'datasets' in dataset:
        raise ValueError(f'{key}.dataset is a {dataset.get("type")} of several datasets; build one '
                         'memory per dataset (or point --cfg-options at a single dataset)')
    return dataset


def load_panoptic_records(cfg: Config, split: str, skip_invalid: bool = False,
                          report_file: Optional[str] = None) -> Tuple[List[dict], dict]:
    """Records of every image of ``split`` (annotation order), validated first.

    The split is checked by :func:`mmmaps.datasets.validation.check_panoptic_split`:
    any problem raises ``DatasetValidationError`` naming the files and image ids,
    unless ``skip_invalid``, which leaves those images out, writes the list of
    what was dropped to ``report_file`` and records it in ``source``.

    Returns:
        tuple: ``records`` (list of dict with ``img_id``, ``img_path``,
        ``seg_map_path``, ``file_name``, ``segments`` = list of
        ``(segment_id, label, is_thing)``) and ``source`` (dict with the
        annotation file, its sha256, data root and split), for the manifest.
    """
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)

    from mmmaps.datasets.validation import (check_panoptic_split, dataset_classes,
                                            split_paths)

    dataset_cfg = dataset_cfg_of(cfg, split)
    dataset_cfg.update(pipeline=[], filter_cfg=None, lazy_init=False)
    dataset_cfg.pop('indices', None)
    paths = split_paths(dataset_cfg)
    if not osp.isfile(paths['ann_file']):
        raise FileNotFoundError(f'cannot read the {split} dataset of the config: '
                                f'{paths["ann_file"]} does not exist. Set '
                                f'{split}_dataloader.dataset.data_root/ann_file')
    checked = check_panoptic_split(**paths, classes=dataset_classes(dataset_cfg),
                                   skip_invalid=skip_invalid,
                                   report_file=report_file)
    with tempfile.TemporaryDirectory() as tmp:
        if checked['dropped_image_ids']:
            # mmdet reads the annotation file itself: hand it the filtered copy
            dataset_cfg['ann_file'] = osp.join(tmp, osp.basename(paths['ann_file']))
            with open(dataset_cfg['ann_file'], 'w') as f:
                json.dump(checked['panoptic'], f)
        try:
            dataset = DATASETS.build(dataset_cfg)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f'cannot read the {split} dataset of the config: {exc}. Set '
                                    f'{split}_dataloader.dataset.data_root/ann_file') from exc
    if not hasattr(dataset, 'cat2label'):
        raise TypeError(f'{split}_dataloader.dataset is a {type(dataset).__name__}; the memory '
                        'builder needs a COCO-panoptic dataset (CocoPanopticDataset)')
    records = []
    for position in range(len(dataset)):
        info = dataset.get_data_info(position)
        if not info.get('seg_map_path'):
            raise ValueError(f'{split} dataset has no panoptic masks (data_prefix.seg) for '
                             f'{info["img_path"]}')
        records.append(dict(
            img_id=int(info['img_id']), img_path=info['img_path'],
            seg_map_path=info['seg_map_path'],
            file_name=osp.relpath(info['img_path'], dataset.data_prefix['img'])
            if dataset.data_prefix.get('img') else osp.basename(info['img_path']),
            segments=[(int(s['id']), int(s['category']), bool(s['is_thing']))
                      for s in info['segments_info']]))
    ann_file = osp.abspath(paths['ann_file'])
    source = dict(split=split, ann_file=ann_file, ann_sha256=sha256_file(ann_file),
                  data_root=dataset.data_root, num_images=len(records),
                  classes=list(dataset.metainfo.get('classes', [])))
    if checked['problems']:
        source['skipped_invalid_images'] = dict(
            image_ids=checked['dropped_image_ids'], num_problems=len(checked['problems']),
            report=osp.abspath(report_file) if report_file else None)
    return records, source
