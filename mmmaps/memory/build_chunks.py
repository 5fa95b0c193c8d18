"""The chunk files of a memory build: ``<out>.build/chunks/chunk-<j>.npz`` holds the encoded
keys (and pooled segment values) of the ``j``-th fixed run of images. A chunk is written
under a temporary name unique to its process, then renamed, so a finished chunk is whole;
one that does not read back whole (or holds other images) is reported, to be re-encoded."""
import os
import os.path as osp
import socket
import zipfile
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .bank import as_identities

_TMP_SUFFIX = '.tmp.npz'


def chunk_dir(build_dir: str) -> str:
    """The folder of the chunk files of a build folder."""
    return osp.join(build_dir, 'chunks')


def chunk_path(build_dir: str, j: int) -> str:
    """The file of chunk ``j``."""
    return osp.join(chunk_dir(build_dir), f'chunk-{j:06d}.npz')


def temporary_chunk_owner(name: str) -> Optional[Tuple[str, int]]:
    """``(host, pid)`` of the process writing the temporary chunk file ``name``, or None if
    ``name`` is not a temporary chunk file."""
    if not name.endswith(_TMP_SUFFIX):
        return None
    owner = name[:-len(_TMP_SUFFIX)].rpartition('.npz.')[2]
    host, _, pid = owner.rpartition('-')
    return (host, int(pid)) if pid.isdigit() else None


def save_chunk(path: str, items: List[dict], dense_channels: Optional[int]) -> None:
    """Write the encoded ``items`` (one per image, in order) as the chunk file ``path``;
    ``dense_channels`` is the pooled value width, None for a key-only build."""
    arrays = dict(keys=np.stack([i['key'] for i in items]).astype(np.float32),
                  image_ids=np.array([i['img_id'] for i in items], np.int64),
                  identities=as_identities([i['identity'] for i in items]))
    if dense_channels is not None:
        arrays.update(
            counts=np.array([len(i['values']) for i in items], np.int64),
            values=np.concatenate([i['values'].reshape(-1, dense_channels) for i in items]),
            category_ids=np.concatenate([i['category_ids'] for i in items]),
            is_thing=np.concatenate([i['is_thing'] for i in items]),
            segment_ids=np.concatenate([i['segment_ids'] for i in items]),
            areas=np.concatenate([i['areas'] for i in items]),
            skipped=np.array([i['skipped'] for i in items], np.int64))
    tmp = f'{path}.{socket.gethostname()}-{os.getpid()}{_TMP_SUFFIX}'  # unique per process
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def chunk_problem(path: str, expected_ids: Sequence[int], dense: bool) -> Optional[str]:
    """Why the chunk file ``path`` is unusable (truncated, corrupt, not the images
    ``expected_ids``, missing the segment arrays of a ``dense`` build), or None."""
    need = ['keys', 'image_ids', 'identities']
    if dense:
        need += ['counts', 'values', 'category_ids', 'is_thing', 'segment_ids', 'areas',
                 'skipped']
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
            if broken is not None:
                return f'member {broken} fails its CRC check'
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in need if k not in data.files]
            if missing:
                return f'arrays {missing} missing'
            ids = data['image_ids']
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        return f'{type(exc).__name__}: {exc}'
    expected = list(expected_ids)
    if ids.tolist() != expected:
        return f'holds image ids {ids.tolist()[:5]}..., expected {expected[:5]}...'
    return None
