"""Build the MAPS memory of a dataset: encode, pool, checkpoint, merge, publish.

Work is split in fixed chunks of images (by position in the annotation file).
Each finished chunk is saved under ``<out>.build/chunks/`` (:mod:`.build_chunks`), so a
killed build continues with ``resume=True``; shard ``i`` of ``n`` encodes the chunks ``j``
with ``j % n == i``; the merge streams the chunks in order into the banks and publishes
``<out>`` atomically. Chunks only depend on their images and the (frozen, deterministic)
encoders, so resumed, sharded and uninterrupted builds give identical banks.

One build of ``<out>`` runs at a time (:mod:`.build_lock`); what killed builds leave is
removed by :mod:`.build_leftovers`; :class:`~mmmaps.memory.appender.MemoryAppender` extends
an existing memory with the same machinery.
"""
import datetime
import json
import logging
import os
import os.path as osp
import shutil
import time
from typing import List, Optional, Tuple

import mmcv
import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.utils import ProgressBar

from .bank import BankWriter
from .build_chunks import chunk_dir, chunk_path, chunk_problem, save_chunk
from .build_leftovers import clean_leftovers
from .build_lock import BuildLock
from .build_plan import (PLAN_FILE, MemoryBuildError, as_saved, default_out, memory_cfg_of,
                         plan_differences)
from .config_schema import MemoryConfigError
from .dataset_records import load_panoptic_records
from .encoders import build_memory_encoder
from .faiss_index import normalize_index_cfg
from .image_identity import ImageIdentities, identities_digest
from .memory_root import FORMAT_NAME, FORMAT_VERSION, MemoryRoot, read_root_manifest
from .query_cache import QueryEmbeddingCache
from .segment_pooling import pool_segments, rgb_to_panoptic_id
from .storage import MemoryBankError, atomic_directory, write_json

DEFAULT_BUILD = dict(batch_size=8, chunk_size=64, num_workers=2)


class _ImageSource(torch.utils.data.Dataset):
    """Decodes an image (3, H, W) uint8 RGB and its panoptic id map (H, W)."""

    def __init__(self, records: List[dict]):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        record = self.records[index]
        image = mmcv.imread(record['img_path'], channel_order='rgb')
        if image is None:
            raise FileNotFoundError(f'cannot read image {record["img_path"]}')
        pan = mmcv.imread(record['seg_map_path'], flag='color', channel_order='rgb')
        if pan is None:
            raise FileNotFoundError(f'cannot read panoptic PNG {record["seg_map_path"]}')
        if pan.shape[:2] != image.shape[:2]:
            raise ValueError(f'{record["seg_map_path"]} is {pan.shape[:2]}, its image '
                             f'{record["img_path"]} is {image.shape[:2]}')
        return index, torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), \
            torch.from_numpy(rgb_to_panoptic_id(pan))


def _collate(batch):
    return batch


class MemoryBuilder:
    """Builds ``<out>/{scene,object,query_cache}`` from a config's dataset.

    Args:
        cfg (Config): A model config with a ``memory`` section and dataloaders.
        split (str): Dataset split to encode.
        out (str, optional): Output directory (default ``memory.root``).
        device (str, optional): Encoder device (default: cuda when available).
        query_cache_only (bool): Only encode query keys (e.g. for a val split).
        skip_invalid_images (bool): Leave out the images that fail the dataset
            checks (:mod:`mmmaps.datasets.validation`) and list them in
            ``<out>.invalid_images.json``, instead of refusing the dataset.
    """

    def __init__(self, cfg: Config, split: str = 'train', out: Optional[str] = None,
                 device: Optional[str] = None, query_cache_only: bool = False,
                 skip_invalid_images: bool = False):
        self.cfg = cfg
        self.memory = memory_cfg_of(cfg)
        self.split = split
        self.out = osp.abspath(out or default_out(self.memory, split))
        self.build_dir = self.out + '.build'
        self.device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
        self.query_cache_only = query_cache_only
        self.options = dict(DEFAULT_BUILD, **self.memory.get('build', {}))
        self.records, self.source = load_panoptic_records(
            cfg, split, skip_invalid=skip_invalid_images,
            report_file=self.out + '.invalid_images.json')
        if not self.records:
            raise MemoryBuildError(f'the {split} dataset has no images')
        self._check_records()
        # content identities (cached per folder by name/size/mtime: a rebuild re-reads
        # nothing, and the first training run finds them cached)
        for record, identity in zip(self.records, ImageIdentities().of_many(
                [r['img_path'] for r in self.records])):
            record['identity'] = identity
        if not self.memory.get('key_encoder'):
            raise MemoryConfigError('memory.key_encoder is not set (the frozen encoder of the '
                                    'memory keys); see configs/_base_/memory/')
        self.key_encoder = build_memory_encoder(self.memory['key_encoder'],
                                                'memory.key_encoder').to(self.device)
        dense_cfg = None if query_cache_only else self.memory.get('dense_encoder')
        self.dense_encoder = (build_memory_encoder(dense_cfg, 'memory.dense_encoder')
                              .to(self.device) if dense_cfg else None)
        if self.key_encoder.kind != 'global':
            raise TypeError('memory.key_encoder must be a global (CLS) encoder, got '
                            f'{type(self.key_encoder).__name__}')
        if self.dense_encoder is not None and self.dense_encoder.kind != 'dense':
            raise TypeError('memory.dense_encoder must be a dense encoder, got '
                            f'{type(self.dense_encoder).__name__}')
        chunk = int(self.options['chunk_size'])
        self.chunks = [(s, min(s + chunk, len(self.records)))
                       for s in range(0, len(self.records), chunk)]
        self.plan = dict(
            split=split, source=self.source, chunk_size=chunk, num_chunks=len(self.chunks),
            image_ids=[r['img_id'] for r in self.records],
            images_sha256=identities_digest([r['identity'] for r in self.records]),
            key_encoder=self.key_encoder.describe(),
            dense_encoder=self.dense_encoder.describe() if self.dense_encoder else None,
            query_cache_only=query_cache_only)

    def _plan_as_saved(self) -> dict:
        """The plan as it reads back from JSON (tuples become lists), for comparisons."""
        return as_saved(self.plan)

    def _check_records(self) -> None:
        """Checks on the records before any encoder is built (cheap, fail early)."""
        ids = [r['img_id'] for r in self.records]
        if len(set(ids)) != len(ids):
            seen, dup = set(), []
            for i in ids:
                if i in seen:
                    dup.append(i)
                seen.add(i)
            raise MemoryBuildError(f'{self.source["ann_file"]} has duplicate image ids '
                                   f'(e.g. {dup[:5]}); image ids must be unique')

    # ------------------------------------------------------------------ paths
    def _chunk_path(self, j: int) -> str:
        return chunk_path(self.build_dir, j)

    def done_chunks(self) -> List[int]:
        return [j for j in range(len(self.chunks)) if osp.isfile(self._chunk_path(j))]

    def is_up_to_date(self) -> bool:
        """The published memory has this plan *and* every file matches its checksum (what
        the MemoryHook checks): a damaged memory is not up to date (logged, naming why)."""
        if not osp.isfile(osp.join(self.out, 'manifest.json')):
            return False
        try:
            if read_root_manifest(self.out).get('plan') != self._plan_as_saved():
                return False
            MemoryRoot(self.out, verify=True)
        except MemoryBankError as exc:
            print_log(f'{self.out} is damaged, it will be rebuilt: {exc}', logger='current',
                      level=logging.WARNING)
            return False
        return True

    def check_chunks(self) -> List[str]:
        """Delete (to re-encode) the finished chunks that do not read back whole; returns
        one line per deleted chunk, naming its path and the problem (also logged)."""
        bad = []
        for j in self.done_chunks():
            path = self._chunk_path(j)
            problem = self._chunk_problem(j)
            if problem:
                os.remove(path)
                bad.append(f'{path}: {problem}')
                print_log(f'chunk {path} is damaged ({problem}); it will be re-encoded',
                          logger='current', level=logging.WARNING)
        return bad

    def _chunk_problem(self, j: int) -> Optional[str]:
        """Why chunk ``j`` is unusable (truncated, corrupt, wrong images), or None."""
        start, stop = self.chunks[j]
        return chunk_problem(self._chunk_path(j), [r['img_id'] for r in self.records[start:stop]],
                             dense=self.dense_encoder is not None)

    def lock(self) -> 'BuildLock':
        """The lock of this output (``<out>.lock``): one build/merge of ``out`` at a time."""
        return BuildLock(self.out + '.lock')

    def clean_leftovers(self, published_intact: bool = False) -> List[str]:
        """Remove what killed runs left (call while holding :meth:`lock`): temporary
        directories of interrupted merges/publishes beside ``out`` (``.<out>.partial-*``,
        ``.<out>.old-*``), temporary chunk files, and a ``.build/`` without a plan, or whose
        plan is that of the published memory when ``published_intact`` (the merge was killed
        while cleaning up; see :meth:`is_up_to_date`). Returns the removed paths."""
        return clean_leftovers(self.out, self.build_dir, published_intact)

    def prepare(self, resume: bool, force: bool) -> None:
        """Check or create ``<out>.build`` for this plan."""
        plan_path = osp.join(self.build_dir, PLAN_FILE)
        if osp.isdir(self.build_dir) and force:
            shutil.rmtree(self.build_dir)
        if osp.isfile(plan_path):
            with open(plan_path) as f:
                previous = json.load(f)
            if previous != self._plan_as_saved():
                differs = plan_differences(previous, self.plan)
                raise MemoryBuildError(
                    f'{self.build_dir} holds a partial build of a different plan (differs in '
                    f'{differs}); pass --force to discard it or choose another --out')
            if not resume:
                raise MemoryBuildError(
                    f'{self.build_dir} holds a partial build ({len(self.done_chunks())}/'
                    f'{len(self.chunks)} chunks done); pass --resume to continue it or --force '
                    'to start over')
            self.check_chunks()  # a truncated/corrupt chunk is named and re-encoded
        os.makedirs(chunk_dir(self.build_dir), exist_ok=True)
        if not osp.isfile(plan_path):
            write_json(plan_path, self.plan)

    # ------------------------------------------------------------------ encoding
    def encode_chunks(self, shard: Tuple[int, int] = (0, 1), progress: bool = True,
                      max_chunks: Optional[int] = None) -> dict:
        """Encode the missing chunks of ``shard``; returns timing statistics.

        ``max_chunks`` stops after that many chunks (used to simulate a kill).
        """
        index, count = shard
        todo = [j for j in range(len(self.chunks))
                if j % count == index and not osp.isfile(self._chunk_path(j))]
        if max_chunks is not None:
            todo = todo[:max_chunks]
        num_images = sum(self.chunks[j][1] - self.chunks[j][0] for j in todo)
        done = len(self.done_chunks())
        if done:
            print_log(f'resuming: {done}/{len(self.chunks)} chunks already encoded',
                      logger='current')
        if not todo:
            return dict(images=0, seconds=0.0)
        batch_size = int(self.options['batch_size'])
        batches = []
        for j in todo:
            start, stop = self.chunks[j]
            batches += [list(range(b, min(b + batch_size, stop)))
                        for b in range(start, stop, batch_size)]
        loader = torch.utils.data.DataLoader(
            _ImageSource(self.records), batch_sampler=batches,
            num_workers=int(self.options['num_workers']), collate_fn=_collate)
        bar = ProgressBar(num_images) if progress else None
        start_time = time.time()
        pending, remaining = {}, list(todo)
        for batch in loader:
            for item in self._encode_batch(batch):
                pending[item['position']] = item
                if bar is not None:
                    bar.update()
            # batches never straddle chunks, so the oldest chunk completes first
            while remaining and all(p in pending for p in range(*self.chunks[remaining[0]])):
                j = remaining.pop(0)
                self._save_chunk(j, [pending.pop(p) for p in range(*self.chunks[j])])
        if bar is not None:
            bar.file.write('\n')
        return dict(images=num_images, seconds=time.time() - start_time)

    @torch.no_grad()
    def _encode_batch(self, batch):
        images = [b[1] for b in batch]
        keys = self.key_encoder(images).float().cpu().numpy()
        dense = self.dense_encoder(images) if self.dense_encoder is not None else None
        items = []
        for n, (position, _, pan) in enumerate(batch):
            record = self.records[position]
            item = dict(position=position, key=keys[n], img_id=record['img_id'],
                        identity=record['identity'])
            if dense is not None:
                seg_ids = [s[0] for s in record['segments']]
                pooled, valid, areas = pool_segments(dense[n], pan.to(self.device), seg_ids)
                valid = valid.cpu().numpy()
                if not valid.all():
                    # validation guarantees every listed segment has pixels
                    raise MemoryBuildError(
                        f'{record["seg_map_path"]} (image id {record["img_id"]}): segments '
                        f'{[i for i, v in zip(seg_ids, valid) if not v]} are listed but have '
                        'no pixel in the PNG')
                item.update(
                    values=pooled.cpu().numpy()[valid],
                    category_ids=np.array([s[1] for s in record['segments']], np.int32)[valid],
                    is_thing=np.array([s[2] for s in record['segments']], np.uint8)[valid],
                    segment_ids=np.array(seg_ids, np.int64)[valid],
                    areas=areas.cpu().numpy()[valid],
                    skipped=int((~valid).sum()))
            items.append(item)
        return items

    def _save_chunk(self, j: int, items: List[dict]) -> None:
        save_chunk(self._chunk_path(j), items,
                   None if self.dense_encoder is None else self.dense_encoder.out_channels)

    # ------------------------------------------------------------------ merge
    def merge(self, stats: Optional[dict] = None) -> str:
        """Stream all chunks into the banks and publish ``self.out`` atomically."""
        missing = [j for j in range(len(self.chunks)) if not osp.isfile(self._chunk_path(j))]
        if missing:
            raise MemoryBuildError(f'cannot merge {self.build_dir}: {len(missing)} of '
                                   f'{len(self.chunks)} chunks missing (first: {missing[:5]}); '
                                   'run the remaining shards (or --resume) first')
        value_dtype = self.memory.get('value_dtype', 'float16')
        index_cfg = normalize_index_cfg(self.memory.get('index'))
        key_desc = self.plan['key_encoder']
        dense_desc = self.plan['dense_encoder']
        names = {r['img_id']: r['file_name'] for r in self.records}
        common = self._bank_meta(dict(source=self.source, key_encoder=key_desc))
        totals = dict(num_images=0, num_segments=0, num_skipped_segments=0)
        with atomic_directory(self.out) as tmp:
            scene = object_ = None
            if not self.query_cache_only:
                scene = BankWriter(osp.join(tmp, 'scene'), 'scene', key_desc['out_channels'],
                                   key_desc['out_channels'], value_dtype, index_cfg,
                                   atomic=False)
                if dense_desc is not None:
                    object_ = BankWriter(
                        osp.join(tmp, 'object'), 'object', key_desc['out_channels'],
                        dense_desc['out_channels'], value_dtype, index_cfg,
                        extra_fields=dict(category_ids='int32', is_thing='uint8',
                                          segment_ids='int64', areas='int64'),
                        atomic=False)
            all_keys, all_ids, all_identities = [], [], []
            self._add_before_chunks(scene, object_, all_keys, all_ids, all_identities, totals)
            for j in range(len(self.chunks)):
                problem = self._chunk_problem(j)
                if problem:
                    raise MemoryBuildError(
                        f'cannot merge {self.build_dir}: chunk {self._chunk_path(j)} is damaged '
                        f'({problem}); run with --resume to re-encode it')
                with np.load(self._chunk_path(j), allow_pickle=False) as data:
                    keys, ids, identities = data['keys'], data['image_ids'], data['identities']
                    files = [names[int(i)] for i in ids]
                    all_keys.append(keys)
                    all_ids.append(ids)
                    all_identities.append(identities)
                    totals['num_images'] += len(ids)
                    if scene is not None:
                        scene.add(keys, keys, np.ones(len(ids), np.int64), ids, identities,
                                  files)
                    if object_ is not None:
                        object_.add(keys, data['values'], data['counts'], ids, identities,
                                    files,
                                    category_ids=data['category_ids'],
                                    is_thing=data['is_thing'],
                                    segment_ids=data['segment_ids'], areas=data['areas'])
                        totals['num_segments'] += int(data['counts'].sum())
                        totals['num_skipped_segments'] += int(data['skipped'].sum())
            if scene is not None:
                scene.commit(dict(common, value_encoder=key_desc))
            if object_ is not None:
                object_.commit(dict(common, value_encoder=dense_desc,
                                    num_skipped_segments=totals['num_skipped_segments']))
            QueryEmbeddingCache.write(osp.join(tmp, 'query_cache'), np.concatenate(all_keys),
                                      np.concatenate(all_ids), np.concatenate(all_identities),
                                      dict(common, encoder=key_desc), atomic=False)
            manifest = dict(
                format=FORMAT_NAME, format_version=FORMAT_VERSION,
                created=datetime.datetime.now().isoformat(timespec='seconds'),
                split=self.split, source=self.source,
                encoders=dict(key=key_desc, dense=dense_desc),
                banks=dict(scene=None if scene is None else 'scene',
                           object=None if object_ is None else 'object'),
                query_cache='query_cache', value_dtype=value_dtype, index=index_cfg,
                stats=dict(totals, **(stats or {})), plan=self.plan, lineage=[])
            write_json(osp.join(tmp, 'manifest.json'), self._root_manifest(manifest))
        shutil.rmtree(self.build_dir, ignore_errors=True)
        return self.out

    # what MemoryAppender changes in a merge
    def _bank_meta(self, common: dict) -> dict:
        return common

    def _add_before_chunks(self, scene, object_, all_keys, all_ids, all_identities,
                           totals) -> None:
        pass

    def _root_manifest(self, manifest: dict) -> dict:
        return manifest


def parse_shard(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    if text is None:
        return None
    try:
        index, count = (int(v) for v in text.split('/'))
    except ValueError:
        raise ValueError(f'--shard must look like i/n (e.g. 0/4), got {text!r}') from None
    if not 0 <= index < count:
        raise ValueError(f'--shard {text}: need 0 <= i < n')
    return index, count


def wait_for_chunks(builder: MemoryBuilder, poll_seconds: float = 5.0,
                    timeout: Optional[float] = None) -> None:
    """Block until every chunk exists (rank 0 of a torchrun build waits for the others)."""
    start = time.time()
    while len(builder.done_chunks()) < len(builder.chunks):
        if timeout is not None and time.time() - start > timeout:
            raise MemoryBuildError(f'timed out waiting for the other shards in '
                                   f'{builder.build_dir}')
        time.sleep(poll_seconds)
