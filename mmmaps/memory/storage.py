"""File helpers for memory banks: checksums, JSON manifests and atomic directories.

A bank directory only becomes visible under its final name once every file in it
is complete (it is written beside the target and renamed), so an interrupted
build never leaves something that a later run would load.
"""
import hashlib
import json
import os
import os.path as osp
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

import numpy as np

_CHUNK = 1 << 22


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: str, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private files; give them the usual umask-based mode."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(_CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_json(path: str, obj: dict) -> None:
    """Write JSON through a temporary file in the same folder, then rename."""
    folder = osp.dirname(osp.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', dir=folder)
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def save_npy(path: str, array: np.ndarray) -> None:
    """``np.save`` through a temporary file, then rename (never pickles)."""
    folder = osp.dirname(osp.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', suffix='.npy', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        _publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def replace_dir(src: str, dst: str) -> None:
    """Move the finished directory ``src`` to ``dst``, replacing an existing ``dst``.

    The old ``dst`` is first renamed aside, so at every moment ``dst`` is either
    the old complete directory, absent, or the new complete one.
    """
    dst = dst.rstrip('/')
    old = None
    if osp.exists(dst):
        old = tempfile.mkdtemp(prefix='.' + osp.basename(dst) + '.old-', dir=osp.dirname(dst) or '.')
        os.rename(dst, osp.join(old, 'bank'))
    os.rename(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(dst: str) -> Iterator[str]:
    """Yield a temporary directory beside ``dst``; rename it to ``dst`` on success.

    On any exception the temporary directory is deleted and ``dst`` is untouched.
    """
    dst = osp.abspath(dst.rstrip('/'))
    parent = osp.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.' + osp.basename(dst) + '.partial-', dir=parent)
    _publish_mode(tmp, directory=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, dst)
