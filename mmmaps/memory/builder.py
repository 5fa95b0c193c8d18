"""Build the MAPS memory of a dataset: encode, pool, checkpoint, merge, publish.

Work is split in fixed chunks of images (by position in the annotation file).
Each finished chunk is saved under ``<out>.build/chunks/`` (temp name, then
rename), so a killed build continues with ``resume=True``; shard ``i`` of ``n``
encodes the chunks ``j`` with ``j % n == i``; the merge streams the chunks in
order into the banks and publishes ``<out>`` atomically. Chunks only depend on
their images and the (frozen, deterministic) encoders, so resumed, sharded and
uninterrupted builds give identical banks.

:class:`MemoryAppender` builds a new memory from an existing one plus the images
of another annotation file: the parent's arrays are copied, only the new images
are encoded (same chunks, resume and shards), the index is rebuilt over all keys,
and the new root records its lineage (parent + manifest sha256, appended source).
"""
import copy
import datetime
import json
import logging
import os
import os.path as osp
import shutil
import socket
import time
import zipfile
from typing import List, Optional, Tuple

import mmcv
import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.utils import ProgressBar

from .bank import BankWriter, MemoryBank, as_identities
from .config_schema import MemoryConfigError, check_memory_cfg
from .dataset_records import dataset_cfg_of, load_panoptic_records
from .encoders import build_memory_encoder
from .faiss_index import normalize_index_cfg
from .image_identity import ImageIdentities, identities_digest
from .memory_root import FORMAT_NAME, FORMAT_VERSION, MemoryRoot, read_root_manifest
from .query_cache import QueryEmbeddingCache
from .segment_pooling import pool_segments, rgb_to_panoptic_id
from .storage import MemoryBankError, atomic_directory, write_json

DEFAULT_BUILD = dict(batch_size=8, chunk_size=64, num_workers=2)


class MemoryBuildError(RuntimeError):
    """A build cannot start or finish as asked (the message says why and what to do)."""


def memory_cfg_of(cfg: Config) -> dict:
    """The config's ``memory`` section as a plain dict, every key of it checked
    (:func:`~mmmaps.memory.config_schema.check_memory_cfg`)."""
    if 'memory' not in cfg:
        raise KeyError('the config has no `memory` section (key_encoder, dense_encoder, index, '
                       'root); see configs/_base_/memory/')
    memory = copy.deepcopy(cfg.memory)
    if hasattr(memory, 'to_dict'):
        memory = memory.to_dict()
    return dict(check_memory_cfg(memory))


def _as_saved(obj):
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj))


def plan_differences(previous: dict, current: dict, keys=None) -> List[str]:
    """Keys (of ``keys``, default all) whose values differ between two plans, as
    ``'key'`` or, for dict values such as encoder descriptions,
    ``'key.field (a != b)'`` naming the first differing fields."""
    previous, current = _as_saved(previous), _as_saved(current)
    keys = sorted(set(previous) | set(current)) if keys is None else list(keys)
    out = []
    for key in keys:
        a, b = previous.get(key), current.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            fields = [f for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
            out.append(f'{key}.' + ', '.join(
                f'{f} ({str(a.get(f))[:16]} != {str(b.get(f))[:16]})' for f in fields[:3]))
        else:
            out.append(key if not isinstance(a, (str, int, float, type(None))) else
                       f'{key} ({str(a)[:24]} != {str(b)[:24]})')
    return out


def default_out(memory: dict, split: str) -> str:
    root = memory.get('root')
    if not root:
        raise KeyError('memory.root is not set; pass --out DIR')
    return root if split == 'train' else f'{root.rstrip("/")}_{split}'


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
        return _as_saved(self.plan)

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
        return osp.join(self.build_dir, 'chunks', f'chunk-{j:06d}.npz')

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
        need = ['keys', 'image_ids', 'identities']
        if self.dense_encoder is not None:
            need += ['counts', 'values', 'category_ids', 'is_thing', 'segment_ids', 'areas',
                     'skipped']
        try:
            with zipfile.ZipFile(self._chunk_path(j)) as archive:
                broken = archive.testzip()
                if broken is not None:
                    return f'member {broken} fails its CRC check'
            with np.load(self._chunk_path(j), allow_pickle=False) as data:
                missing = [k for k in need if k not in data.files]
                if missing:
                    return f'arrays {missing} missing'
                ids = data['image_ids']
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            return f'{type(exc).__name__}: {exc}'
        expected = [r['img_id'] for r in self.records[start:stop]]
        if ids.tolist() != expected:
            return f'holds image ids {ids.tolist()[:5]}..., expected {expected[:5]}...'
        return None

    def lock(self) -> 'BuildLock':
        """The lock of this output (``<out>.lock``): one build/merge of ``out`` at a time."""
        return BuildLock(self.out + '.lock')

    def clean_leftovers(self, published_intact: bool = False) -> List[str]:
        """Remove what killed runs left (call while holding :meth:`lock`): temporary
        directories of interrupted merges/publishes beside ``out`` (``.<out>.partial-*``,
        ``.<out>.old-*``), temporary chunk files, and a ``.build/`` without a plan, or whose
        plan is that of the published memory when ``published_intact`` (the merge was killed
        while cleaning up; see :meth:`is_up_to_date`). Returns the removed paths."""
        parent, base = osp.dirname(self.out), osp.basename(self.out)
        removed = []
        if osp.isdir(parent):
            for name in sorted(os.listdir(parent)):
                if name.startswith((f'.{base}.partial-', f'.{base}.old-')):
                    removed.append(osp.join(parent, name))
        chunks = osp.join(self.build_dir, 'chunks')
        if osp.isdir(chunks):  # temporary chunks of dead processes of this host (not of shards
            host = socket.gethostname()  # still running here or elsewhere)
            for name in sorted(os.listdir(chunks)):
                owner = name[:-len('.tmp.npz')].rpartition('.npz.')[2] if name.endswith(
                    '.tmp.npz') else ''
                owner_host, _, pid = owner.rpartition('-')
                if owner_host == host and pid.isdigit() and not BuildLock._alive(int(pid)):
                    removed.append(osp.join(chunks, name))
        if osp.isdir(self.build_dir):
            plan_path = osp.join(self.build_dir, 'plan.json')
            published = None
            if published_intact:
                published = read_root_manifest(self.out).get('plan')
            try:
                with open(plan_path) as f:
                    plan = json.load(f)
            except (OSError, ValueError):
                plan = None
            if plan is None or (published is not None and plan == published):
                removed.append(self.build_dir)
        for path in removed:
            print_log(f'removing {path} (left by an interrupted build)', logger='current')
            if osp.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif osp.exists(path):
                os.remove(path)
        return removed

    def prepare(self, resume: bool, force: bool) -> None:
        """Check or create ``<out>.build`` for this plan."""
        plan_path = osp.join(self.build_dir, 'plan.json')
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
        os.makedirs(osp.join(self.build_dir, 'chunks'), exist_ok=True)
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
        positions = [b[0] for b in batch]
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
        arrays = dict(keys=np.stack([i['key'] for i in items]).astype(np.float32),
                      image_ids=np.array([i['img_id'] for i in items], np.int64),
                      identities=as_identities([i['identity'] for i in items]))
        if self.dense_encoder is not None:
            channels = self.dense_encoder.out_channels
            arrays.update(
                counts=np.array([len(i['values']) for i in items], np.int64),
                values=np.concatenate([i['values'].reshape(-1, channels) for i in items]),
                category_ids=np.concatenate([i['category_ids'] for i in items]),
                is_thing=np.concatenate([i['is_thing'] for i in items]),
                segment_ids=np.concatenate([i['segment_ids'] for i in items]),
                areas=np.concatenate([i['areas'] for i in items]),
                skipped=np.array([i['skipped'] for i in items], np.int64))
        path = self._chunk_path(j)
        tmp = f'{path}.{socket.gethostname()}-{os.getpid()}.tmp.npz'  # unique per process
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        finally:
            if osp.exists(tmp):
                os.remove(tmp)

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


class BuildLock:
    """``<out>.lock`` holding ``{pid, host, started}`` of the build that owns ``out``.

    A second build of the same ``out`` refuses, naming the owner; a lock whose process
    is dead (same host) is stale and taken over. A lock of another host is never taken
    over (its process cannot be checked): delete the file if that build is gone.
    """

    def __init__(self, path: str):
        self.path = path
        self.held = False

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def owner(self) -> Optional[dict]:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # garbage: treated as stale below

    def acquire(self) -> 'BuildLock':
        me = dict(pid=os.getpid(), host=socket.gethostname(),
                  started=datetime.datetime.now().isoformat(timespec='seconds'))
        os.makedirs(osp.dirname(self.path) or '.', exist_ok=True)
        # the lock appears with its content (hard link of a finished unique temporary file)
        tmp = f'{self.path}.{me["host"]}-{me["pid"]}.tmp'
        with open(tmp, 'w') as f:
            json.dump(me, f)
        try:
            return self._acquire(tmp, me)
        finally:
            os.remove(tmp)

    def _acquire(self, tmp: str, me: dict) -> 'BuildLock':
        for _ in range(3):
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                owner = self.owner()
                if owner is None:
                    continue
                pid, host = owner.get('pid'), owner.get('host')
                if pid == me['pid'] and host == me['host']:
                    self.held = True  # ours already (build_memory.main run twice in a process)
                    return self
                if isinstance(pid, int) and host and (host != me['host'] or self._alive(pid)):
                    raise MemoryBuildError(
                        f'another build of {self.path[:-len(".lock")]} is running: pid {pid} on '
                        f'{host} (started {owner.get("started")}, lock {self.path}); wait for '
                        'it to finish' + ('' if host == me['host'] else
                                          f', or delete {self.path} if it is gone'))
                print_log(f'taking over the stale lock {self.path} of pid {pid} on {host} '
                          '(no longer running)', logger='current', level=logging.WARNING)
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            self.held = True
            return self
        raise MemoryBuildError(f'cannot take the lock {self.path} (contended); try again')

    def release(self) -> None:
        if self.held:
            owner = self.owner() or {}
            if owner.get('pid') == os.getpid():
                os.remove(self.path)
            self.held = False

    def __enter__(self) -> 'BuildLock':
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
