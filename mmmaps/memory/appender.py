"""Append to a MAPS memory: a new memory = an existing one plus the images of another
annotation file.

The parent's arrays are copied, only the new images are encoded (same chunks, resume and
shards as a build), the index is rebuilt over all keys, and the new root records its lineage
(parent + manifest sha256, appended source).
"""
import copy
import logging
import os
import os.path as osp
from typing import List, Optional

import numpy as np
from mmengine.config import Config
from mmengine.logging import print_log

from .bank import BankWriter, MemoryBank
from .build_plan import MemoryBuildError, plan_differences
from .builder import MemoryBuilder
from .dataset_records import dataset_cfg_of
from .faiss_index import normalize_index_cfg
from .memory_root import MemoryRoot, read_root_manifest


def with_dataset_source(cfg: Config, split: str, ann_file: str, img_prefix: str,
                        seg_prefix: Optional[str] = None) -> Config:
    """A copy of ``cfg`` whose ``{split}_dataloader.dataset`` (unwrapped) reads another
    COCO-panoptic annotation file: its dataset type, metainfo (classes) and loading
    options stay, ``ann_file`` and ``data_prefix`` are replaced by absolute paths.

    ``seg_prefix`` defaults to the COCO-panoptic layout: ``ann_file`` without
    ``.json`` (``annotations/panoptic_X.json`` -> ``annotations/panoptic_X/``).
    """
    ann_file = osp.abspath(ann_file)
    if not osp.isfile(ann_file):
        raise FileNotFoundError(f'annotation file {ann_file} does not exist')
    seg_prefix = osp.abspath(seg_prefix or osp.splitext(ann_file)[0])
    img_prefix = osp.abspath(img_prefix)
    for what, folder in (('image folder (--img-prefix)', img_prefix),
                         ('panoptic PNG folder (--seg-prefix)', seg_prefix)):
        if not osp.isdir(folder):
            raise FileNotFoundError(f'{what} {folder} does not exist')
    dataset = dataset_cfg_of(cfg, split)
    dataset.update(ann_file=ann_file, data_root=None,
                   data_prefix=dict(img=img_prefix + os.sep, seg=seg_prefix + os.sep))
    cfg = copy.deepcopy(cfg)
    cfg[f'{split}_dataloader'] = dict(dataset=dataset)
    return cfg


class MemoryAppender(MemoryBuilder):
    """Build ``out`` = the memory ``parent`` + the images of another annotation file.

    The parent's keys, values and per-object arrays are copied bit for bit (never
    re-encoded); only the new images are encoded, in the same resumable/shardable
    chunks as a build (``<out>.build/``); the FAISS indices are rebuilt over all
    keys; ``out`` is published atomically and the parent is never modified (so it
    cannot be ``out``). The root manifest keeps the parent's ``source`` and adds the
    new one to ``sources`` and an entry to ``lineage`` (parent path and manifest
    sha256, appended annotation file and sha256, number of images, time).

    Refused before anything is written: image ids already in the parent (ids
    must stay unique: they are the leak guard's and the query cache's key), and a
    config whose memory section (encoders, value dtype, index) differs from the
    parent's (see :func:`plan_differences`).

    Args:
        cfg (Config): The config the parent was built with (``memory`` section and
            a ``{split}_dataloader`` whose dataset type/classes read the new file).
        parent (str): Existing memory root.
        ann_file (str): COCO-panoptic annotation file of the new images.
        img_prefix (str): Folder of the new images.
        seg_prefix (str, optional): Folder of their panoptic PNGs.
        out (str): New memory root.
        device (str, optional): Encoder device.
        skip_invalid_images (bool): As for :class:`MemoryBuilder`.
    """

    def __init__(self, cfg: Config, parent: str, ann_file: str, img_prefix: str,
                 seg_prefix: Optional[str] = None, out: Optional[str] = None,
                 device: Optional[str] = None, skip_invalid_images: bool = False):
        self.parent_root = osp.abspath(parent.rstrip('/'))
        self.parent_manifest = read_root_manifest(self.parent_root)
        if not out:
            raise MemoryBuildError('appending needs --out NEW_DIR: the result is a new memory '
                                   f'beside the parent {self.parent_root}, which stays as is')
        if osp.abspath(out.rstrip('/')) == self.parent_root:
            raise MemoryBuildError(f'--out {out} is the parent memory; appending writes a new '
                                   'memory (the parent stays untouched and loadable): choose '
                                   'another --out')
        banks = self.parent_manifest['banks']
        if not banks.get('scene'):
            raise MemoryBuildError(f'{self.parent_root} holds only a query-embedding cache, no '
                                   'banks to append to')
        self.parent_ids = np.load(osp.join(self.parent_root, banks['scene'], 'image_ids.npy'),
                                  allow_pickle=False)
        split = self.parent_manifest.get('split', 'train')
        self.prefixes = dict(img_prefix=osp.abspath(img_prefix),
                             seg_prefix=osp.abspath(seg_prefix or osp.splitext(
                                 osp.abspath(ann_file))[0]))
        super().__init__(with_dataset_source(cfg, split, ann_file, img_prefix, seg_prefix),
                         split=split, out=out, device=device,
                         skip_invalid_images=skip_invalid_images)
        self._check_parent_plan()
        in_parent = set(np.load(osp.join(self.parent_root, banks['scene'], 'image_sha256.npy'),
                                allow_pickle=False).tolist())
        copies = [r for r in self.records if r['identity'].encode() in in_parent]
        if copies:
            print_log(f'{len(copies)} of the {len(self.records)} appended images are already in '
                      f'{self.parent_root} under other ids (same bytes, e.g. id '
                      f'{copies[0]["img_id"]} {copies[0]["img_path"]}); the memory holds them '
                      'twice, and a training image never retrieves any copy of itself (the '
                      'leak guard compares content)', logger='current', level=logging.WARNING)
        # a partial build belongs to this parent: another parent is another plan
        self.plan['parent'] = dict(root=self.parent_root,
                                   manifest_sha256=self.parent_manifest['_sha256'])

    def _check_records(self) -> None:
        super()._check_records()
        ids = np.array([r['img_id'] for r in self.records], np.int64)
        clash = np.intersect1d(ids, self.parent_ids)
        if len(clash):
            raise MemoryBuildError(
                f'{len(clash)} of the {len(ids)} image ids of {self.source["ann_file"]} are '
                f'already in the memory {self.parent_root} (e.g. {clash[:5].tolist()}); image '
                'ids must be unique across a memory. Renumber the new images (e.g. above '
                f'{int(self.parent_ids.max())}, the largest id in the parent) or leave out '
                'the images it already holds.')

    def _check_parent_plan(self) -> None:
        parent = self.parent_manifest
        theirs = dict(key_encoder=parent['encoders']['key'],
                      dense_encoder=parent['encoders'].get('dense'),
                      value_dtype=parent['value_dtype'], index=parent['index'])
        ours = dict(key_encoder=self.plan['key_encoder'],
                    dense_encoder=self.plan['dense_encoder'],
                    value_dtype=self.memory.get('value_dtype', 'float16'),
                    index=normalize_index_cfg(self.memory.get('index')))
        differs = plan_differences(theirs, ours)
        if differs:
            raise MemoryBuildError(
                f'cannot append to {self.parent_root}: the config\'s memory section differs '
                f'from the one it was built with in {"; ".join(differs)} (parent != config). '
                'Appended images must be encoded exactly like the parent\'s; use the config '
                'the parent was built with, or build a new memory.')

    def _bank_meta(self, common: dict) -> dict:
        parent_source = self.parent_manifest['source']
        return dict(common, source=parent_source, sources=self._sources())

    def _sources(self) -> List[dict]:
        return list(self.parent_manifest.get('sources') or [self.parent_manifest['source']]) + [
            dict(self.source, **self.prefixes)]

    def _add_before_chunks(self, scene, object_, all_keys, all_ids, all_identities,
                           totals) -> None:
        parent = MemoryRoot(self.parent_root, verify=True)
        if parent.manifest['_sha256'] != self.plan['parent']['manifest_sha256']:
            raise MemoryBuildError(f'{self.parent_root} changed since this append started '
                                   '(manifest sha256 differs); start over with --force')
        if scene is not None:
            _copy_bank(parent.scene_bank, scene)
        if object_ is not None:
            if parent.object_bank is None:
                raise MemoryBuildError(f'{self.parent_root} has no object bank to extend')
            _copy_bank(parent.object_bank, object_)
        cache = parent.query_cache
        source = cache if cache is not None else parent.scene_bank
        all_keys.append(np.asarray(cache.embeddings if cache is not None else
                                   parent.scene_bank.keys, np.float32))
        all_ids.append(np.asarray(source.image_ids, np.int64))
        all_identities.append(np.asarray(source.identities))
        stats = parent.manifest.get('stats', {})
        totals['num_images'] += parent.scene_bank.num_entries
        totals['num_segments'] += int(stats.get('num_segments', 0))
        totals['num_skipped_segments'] += int(stats.get('num_skipped_segments', 0))

    def _root_manifest(self, manifest: dict) -> dict:
        parent = self.parent_manifest
        appended = {k: v for k, v in self.source.items() if k != 'classes'}
        appended.update(self.prefixes)
        entry = dict(
            operation='append', time=manifest['created'],
            parent=dict(root=self.parent_root, manifest_sha256=parent['_sha256'],
                        num_images=int(len(self.parent_ids))),
            appended=appended)
        manifest.update(source=parent['source'], sources=self._sources(),
                        lineage=list(parent.get('lineage') or []) + [entry])
        manifest['stats']['appended_images'] = len(self.records)
        return manifest


def _copy_bank(bank: MemoryBank, writer: BankWriter, block: int = 4096) -> None:
    """Stream every entry of ``bank`` into ``writer`` unchanged (same dtypes, same order)."""
    if bank.value_dim != writer.value_dim or bank.key_dim != writer.key_dim:
        raise MemoryBuildError(f'{bank.path}: keys {bank.key_dim}-d / values {bank.value_dim}-d, '
                               f'the new bank expects {writer.key_dim}-d / {writer.value_dim}-d')
    files = bank.file_names or [''] * bank.num_entries
    for start in range(0, bank.num_entries, block):
        stop = min(start + block, bank.num_entries)
        lo, hi = int(bank.offsets[start]), int(bank.offsets[stop])
        writer.add(np.asarray(bank.keys[start:stop]), np.asarray(bank.values[lo:hi]),
                   np.diff(bank.offsets[start:stop + 1]), bank.image_ids[start:stop],
                   bank.identities[start:stop], files[start:stop],
                   **{name: np.asarray(array[lo:hi]) for name, array in bank.extras.items()})
