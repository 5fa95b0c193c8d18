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
from typing import Iterator, Sequence

import numpy as np

from mmmaps.utils.output_dirs import output_state, publish_dir, publish_mode

_CHUNK = 1 << 22
MANIFEST = 'manifest.json'
MEMORY_FOLDER = 'MAPS memory'  # the ``what`` of a published memory's output record


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(_CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MemoryBankError(RuntimeError):
    """A memory on disk is missing, incomplete, corrupt or does not fit its user."""


@contextmanager
def _atomic_file(path: str, binary: bool) -> Iterator:
    """An open temporary file beside ``path``, renamed to ``path`` when the block succeeds."""
    folder = osp.dirname(osp.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', dir=folder)
    try:
        with os.fdopen(fd, 'wb' if binary else 'w') as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, obj: dict) -> None:
    """Write JSON through a temporary file in the same folder, then rename."""
    with _atomic_file(path, binary=False) as f:
        json.dump(obj, f, indent=1)


def write_bytes(path: str, data: bytes) -> None:
    """Write bytes through a temporary file in the same folder, then rename."""
    with _atomic_file(path, binary=True) as f:
        f.write(data)


def save_npy(path: str, array: np.ndarray) -> None:
    """``np.save`` through a temporary file, then rename (never pickles)."""
    with _atomic_file(path, binary=True) as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def file_records(folder: str, names) -> dict:
    """``{name: {bytes, sha256}}`` of files in ``folder``, for a manifest."""
    return {name: dict(bytes=osp.getsize(osp.join(folder, name)),
                       sha256=sha256_file(osp.join(folder, name))) for name in sorted(names)}


def read_manifest(folder: str, format_name: str, format_version: int, what: str):
    """Parse and check ``folder/manifest.json``; returns ``(manifest, its sha256)``."""
    path = osp.join(folder, MANIFEST)
    if not osp.isdir(folder):
        raise MemoryBankError(f'{what} {folder} does not exist; build it with '
                              'tools/build_memory.py CONFIG')
    if not osp.isfile(path):
        raise MemoryBankError(f'{path} is missing: {folder} is not a complete {what} '
                              '(interrupted build?); rebuild it with tools/build_memory.py')
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise MemoryBankError(f'{path} is not valid JSON: {exc}') from exc
    if not isinstance(manifest, dict):
        raise MemoryBankError(f'{path}: a manifest must be a JSON object, got '
                              f'{type(manifest).__name__}')
    if manifest.get('format') != format_name:
        raise MemoryBankError(f'{path}: not a {format_name} manifest')
    if manifest.get('format_version') != format_version:
        raise MemoryBankError(f'{path}: format version {manifest.get("format_version")} is not '
                              f'supported by this mmmaps (expects {format_version}); rebuild it '
                              'with tools/build_memory.py')
    return manifest, sha256_bytes(raw)


def check_files(folder: str, manifest: dict, verify: bool) -> None:
    """Every file the manifest lists exists with its size (and sha256 when ``verify``)."""
    manifest_path = osp.join(folder, MANIFEST)
    for name, info in manifest['files'].items():
        path = osp.join(folder, name)
        if not osp.isfile(path):
            raise MemoryBankError(f'{path} listed in {manifest_path} is missing; rebuild it with '
                                  'tools/build_memory.py')
        size = osp.getsize(path)
        if size != info['bytes']:
            raise MemoryBankError(f'{path} has {size} bytes, the manifest records '
                                  f'{info["bytes"]} (truncated or modified); rebuild it')
        if verify and sha256_file(path) != info['sha256']:
            raise MemoryBankError(f'{path} does not match the sha256 in {manifest_path} '
                                  '(corrupt or modified); rebuild it')


@contextmanager
def atomic_directory(dst: str, what: str = MEMORY_FOLDER,
                     legacy_markers: Sequence[str] = (MANIFEST, )) -> Iterator[str]:
    """Yield a temporary directory beside ``dst``; publish it as ``dst`` on success.

    On any exception the temporary directory is deleted and ``dst`` is untouched. Only an
    absent or empty ``dst``, or a ``what`` published here to which nothing was added
    (:func:`mmmaps.utils.output_dirs.output_state`), is replaced; anything else raises
    ``OutputOwnershipError`` before any work, and again at publishing if it changed.
    """
    dst = osp.abspath(dst.rstrip('/'))
    output_state(dst, what, legacy_markers)
    parent = osp.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.' + osp.basename(dst) + '.partial-', dir=parent)
    try:
        yield tmp
        publish_dir(tmp, dst, what, legacy_markers=legacy_markers)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
