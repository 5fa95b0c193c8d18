"""What a MAPS memory retrieves, as pictures (``demo/image_demo.py --show-retrievals``,
``tools/analysis/show_retrievals.py``; MAPS paper Fig. 3/4).

- :class:`BankImages`: image id of a bank entry -> its image file, from the bank's
  manifest file names and the config's dataset (``data_root`` + ``data_prefix.img``) of
  the split the memory was built from (appended images: their recorded ``img_prefix``);
- :class:`SourceSegments`: (image id, segment id) -> the segment's box, from the source
  panoptic annotation file (``segments_info[*].bbox``, else the panoptic PNG);
- :func:`retrieved_objects`: the object slots of one query of a
  :class:`~mmmaps.memory.RetrievalResult`, with each object's bank row, so its segment id
  and area can be read from the object bank's metadata.
"""
import json
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..memory.bank import MemoryBank, MemoryBankError
from ..memory.dataset_records import dataset_cfg_of
from ..memory.memory_root import MemoryRoot
from ..memory.retriever import RetrievalResult
from ..memory.segment_pooling import rgb_to_panoptic_id
from .visualization import read_rgb


def _join(data_root: Optional[str], path: str) -> str:
    """mmengine's BaseDataset rule: a relative path is under ``data_root``."""
    if data_root and not osp.isabs(path):
        return osp.join(data_root, path)
    return path


class BankImages:
    """The image files of a memory's entries.

    The images of the dataset the memory was built from (``memory.source``) are found
    through the config: ``<split>_dataloader.dataset`` (``data_root`` +
    ``data_prefix.img``) of the split it was built from. Images appended later
    (``tools/build_memory.py --append``) are under the ``img_prefix`` recorded with
    their source in the manifest.

    Args:
        cfg (Config): The config (``<split>_dataloader`` of the memory's split).
        memory (MemoryRoot): The loaded memory.
    """

    def __init__(self, cfg, memory: MemoryRoot):
        bank = memory.scene_bank or memory.object_bank
        if bank is None:
            raise MemoryBankError(f'{memory.root} has no memory bank')
        self.split = memory.source.get('split', 'train')
        try:
            dataset = dataset_cfg_of(cfg, self.split)
        except (KeyError, ValueError) as exc:
            raise KeyError(f'the memory at {memory.root} was built from the {self.split} split; '
                           f'its images are found through {self.split}_dataloader.dataset of '
                           f'the config: {exc}') from exc
        data_root = dataset.get('data_root')
        prefixes = dataset.get('data_prefix') or {}
        # one entry per source: where its images, annotation file and PNGs are
        self.sources = [dict(
            img_dir=_join(data_root, prefixes.get('img', '')),
            seg_dir=_join(data_root, prefixes['seg']) if prefixes.get('seg') else None,
            ann_files=[memory.source.get('ann_file')] + (
                [_join(data_root, dataset['ann_file'])] if dataset.get('ann_file') else []),
            what=f'{self.split}_dataloader.dataset data_root + data_prefix.img')]
        sources = memory.manifest.get('sources') or [memory.source]
        for source in sources[1:]:
            self.sources.append(dict(img_dir=source.get('img_prefix'),
                                     seg_dir=source.get('seg_prefix'),
                                     ann_files=[source.get('ann_file')],
                                     what=f'appended from {source.get("ann_file")}'))
        # entries are in source order: the parent's, then each append's
        ends = [int(e['parent']['num_images']) for e in memory.manifest.get('lineage') or []]
        ends = ends[:len(self.sources) - 1] + [bank.num_entries]
        if len(ends) != len(self.sources):
            ends = [bank.num_entries]
            self.sources = self.sources[:1]
        names = bank.file_names
        if len(names) != bank.num_entries or not all(names):
            raise MemoryBankError(f'{bank.path}/manifest.json has no file name for every entry; '
                                  'rebuild the memory with tools/build_memory.py')
        source_of_row = np.searchsorted(np.asarray(ends), np.arange(bank.num_entries),
                                        side='right')
        self._entries = {int(i): (n, int(j)) for i, n, j in
                         zip(bank.image_ids.tolist(), names, source_of_row.tolist())}

    def _entry(self, image_id: int):
        try:
            return self._entries[int(image_id)]
        except KeyError:
            raise KeyError(f'image id {image_id} is not in the memory bank') from None

    def file_name(self, image_id: int) -> str:
        return self._entry(image_id)[0]

    def source_of(self, image_id: int) -> dict:
        return self.sources[self._entry(image_id)[1]]

    def path(self, image_id: int) -> str:
        name, j = self._entry(image_id)
        if not self.sources[j]['img_dir'] and j:
            raise MemoryBankError(f'the manifest records no img_prefix for the images '
                                  f'{self.sources[j]["what"]}')
        return osp.join(self.sources[j]['img_dir'], name)

    def read(self, image_id: int) -> np.ndarray:
        return read_rgb(self.path(image_id), f'memory image (id {image_id}, '
                        f'{self.source_of(image_id)["what"]})')


class SourceSegments:
    """Boxes of the segments of the images a memory holds.

    Read from the panoptic annotation file of the image's source (recorded in the
    memory manifest; for the original source, the config's annotation file when the
    dataset has moved): each segment's ``bbox`` (x, y, w, h), or, when absent, the box
    of its pixels in the panoptic PNG.
    """

    def __init__(self, images: BankImages):
        self.images = images
        self._anns: Dict[int, dict] = {}  # per source index: image id -> annotation
        self._ann_files: Dict[int, str] = {}
        self._pan_cache: Dict[int, np.ndarray] = {}

    def _annotation(self, image_id: int):
        source_index = self.images._entry(image_id)[1]
        if source_index not in self._anns:
            candidates = [c for c in self.images.sources[source_index]['ann_files'] if c]
            ann_file = next((c for c in candidates if osp.isfile(c)), None)
            if ann_file is None:
                raise FileNotFoundError('the panoptic annotation file of the memory\'s images is '
                                        'missing: ' + ' and '.join(candidates) + ' do not exist')
            with open(ann_file) as f:
                data = json.load(f)
            self._anns[source_index] = {int(a['image_id']): a
                                        for a in data.get('annotations', [])}
            self._ann_files[source_index] = ann_file
        ann = self._anns[source_index].get(int(image_id))
        if ann is None:
            raise KeyError(f'image id {image_id} has no annotation in '
                           f'{self._ann_files[source_index]}')
        return ann, source_index

    def bbox(self, image_id: int, segment_id: int) -> List[float]:
        ann, _ = self._annotation(image_id)
        for seg in ann.get('segments_info', []):
            if int(seg['id']) == int(segment_id) and seg.get('bbox'):
                return [float(v) for v in seg['bbox']]
        ys, xs = np.nonzero(self.mask(image_id, segment_id))
        if not len(xs):
            raise KeyError(f'segment {segment_id} of image {image_id} is empty')
        return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                float(ys.max() - ys.min() + 1)]

    def mask(self, image_id: int, segment_id: int) -> np.ndarray:
        image_id = int(image_id)
        if image_id not in self._pan_cache:
            ann, source_index = self._annotation(image_id)
            seg_dir = self.images.sources[source_index]['seg_dir']
            if seg_dir is None:
                raise KeyError(f'{self._ann_files[source_index]} has no bbox for the segments '
                               f'of image {image_id} and no panoptic PNG folder is known')
            path = osp.join(seg_dir, ann['file_name'])
            if len(self._pan_cache) > 64:
                self._pan_cache.pop(next(iter(self._pan_cache)))
            self._pan_cache[image_id] = rgb_to_panoptic_id(read_rgb(path, 'panoptic PNG'))
        return self._pan_cache[image_id] == int(segment_id)


def retrieved_objects(object_bank: MemoryBank, result: RetrievalResult, b: int,
                      max_objects: int) -> List[dict]:
    """The object slots of query ``b``, in slot order, each with its object-bank value row.

    The retriever fills the slots with all objects of the retrieved images in retrieval
    order, capped at ``max_objects``; this rebuilds that order from the object bank's
    CSR offsets and checks it against the result's image and category ids.

    Returns:
        list of dict: ``value_index``, ``image_id``, ``category_id``, ``segment_id``,
        ``area``, ``rank`` (0-based rank of the owning retrieved image).
    """
    if result.object_image_ids is None:
        raise ValueError('the retrieval result has no objects (query with with_objects=True '
                         'on a memory with an object bank)')
    extras = object_bank.extras
    out = []
    for rank, image_id in enumerate(result.image_ids[b].tolist()):
        if image_id < 0:
            continue
        row = object_bank.row_of_image_id(image_id)
        if row < 0:
            continue
        for index in range(*object_bank.offsets[row:row + 2].tolist()):
            if len(out) == max_objects:
                break
            out.append(dict(
                value_index=index, image_id=int(image_id), rank=rank,
                category_id=int(extras['category_ids'][index]),
                segment_id=int(extras['segment_ids'][index]) if 'segment_ids' in extras else -1,
                area=int(extras['areas'][index]) if 'areas' in extras else -1))
    got_ids = result.object_image_ids[b].tolist()[:len(out)]
    got_cats = result.object_category_ids[b].tolist()[:len(out)]
    if got_ids != [o['image_id'] for o in out] or got_cats != [o['category_id'] for o in out]:
        raise RuntimeError('the object slots of the retrieval result do not follow the object '
                           'bank order; mmmaps.apis.retrieved_objects needs updating')
    return out


def encode_images(encoder, images: Sequence[np.ndarray], batch_size: int = 8):
    """Run a memory encoder on RGB uint8 arrays (H, W, 3): a global encoder gives a
    (N, D) tensor, a dense one a list of N (C, h, w) tensors."""
    import torch
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))
                 for im in images[start:start + batch_size]]
        out = encoder(batch)
        if encoder.kind == 'global':
            outputs.append(out.cpu())
        else:
            outputs.extend(out)
    if encoder.kind == 'global':
        return torch.cat(outputs) if outputs else torch.zeros(0, encoder.out_channels)
    return outputs
