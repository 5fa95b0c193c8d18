"""A memory bank on disk: FAISS-indexed keys and memory-mapped grouped values.

Layout of a bank directory::

    manifest.json      format version, dims, metric, index settings, encoders,
                       source annotation + checksum, image ids, file checksums
    index.faiss        the FAISS index over ``keys``
    keys.npy           (N, D) float32, L2-normalised, one key per image
    image_ids.npy      (N,) int64
    image_sha256.npy   (N,) 64-byte ASCII: the sha256 of each image file's bytes, its content
                       identity (what the leak guard compares; ids and names collide)
    offsets.npy        (N + 1,) int64: the values of entry i are rows
                       ``offsets[i]:offsets[i + 1]`` (CSR layout)
    values.bin         (M, C) float16/float32, raw, memory-mapped
    <extra>.npy        optional per-value arrays, e.g. category_ids (M,),
                       areas (M,), segment_ids (M,) in the object bank

The scene bank has one value per image (``offsets = arange(N + 1)``); the object
bank has one value per ground-truth segment, so an image's objects are one slice.
The manifest is JSON, never pickle, and is written last.
"""
import datetime
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import faiss
import numpy as np

from .faiss_index import build_index, configure_search, normalize_index_cfg, to_gpu_if_possible
from .manifest_schema import validate_bank_manifest
from .storage import (MANIFEST, MemoryBankError, atomic_directory, check_files, file_records,
                      read_manifest, save_npy, write_json)

FORMAT_NAME = 'mmmaps-memory-bank'
FORMAT_VERSION = 2  # 2: image_sha256.npy (content identities)
_VALUE_DTYPES = ('float16', 'float32')

__all__ = ['BankWriter', 'MemoryBank', 'MemoryBankError', 'MANIFEST', 'as_identities']

IDENTITY_DTYPE = np.dtype('S64')


def as_identities(identities: Sequence) -> np.ndarray:
    """(n,) ``S64`` array of hex sha256 digests (str or bytes); ValueError on anything else."""
    array = np.asarray([i.encode() if isinstance(i, str) else i for i in identities],
                       dtype=IDENTITY_DTYPE).reshape(-1)
    bad = [i for i in array if len(i) != 64]
    if bad:
        raise ValueError(f'image identities must be 64-character sha256 hex digests, got '
                         f'{bad[:3]}')
    return array


class BankWriter:
    """Streams entries into a new bank directory and commits it atomically.

    Args:
        out_dir (str): Final bank directory.
        kind (str): ``'scene'`` or ``'object'`` (free text, recorded in the manifest).
        key_dim (int): D, dimension of the keys.
        value_dim (int): C, dimension of the values.
        value_dtype (str): ``'float16'`` (default) or ``'float32'`` storage.
        index (dict, optional): FAISS index config, see :mod:`.faiss_index`.
        extra_fields (dict): name -> numpy dtype of per-value arrays.
        atomic (bool): Build beside ``out_dir`` and rename on commit. Set False
            when ``out_dir`` is already inside a temporary directory.

    ``add(keys (n, D), values (m, C), counts (n,), image_ids (n,), identities (n,),
    file_names, **extras (m,))`` may be called many times; ``commit(meta)`` builds the
    index and writes the manifest.
    """

    def __init__(self, out_dir: str, kind: str, key_dim: int, value_dim: int,
                 value_dtype: str = 'float16', index: Optional[dict] = None,
                 extra_fields: Optional[Dict[str, str]] = None, atomic: bool = True):
        if value_dtype not in _VALUE_DTYPES:
            raise ValueError(f'value_dtype must be one of {_VALUE_DTYPES}, got {value_dtype!r}')
        self.out_dir = osp.abspath(out_dir)
        self.kind = kind
        self.key_dim = int(key_dim)
        self.value_dim = int(value_dim)
        self.value_dtype = np.dtype(value_dtype)
        self.index_cfg = normalize_index_cfg(index)
        self.extra_fields = dict(extra_fields or {})
        self.atomic = atomic
        self._keys: List[np.ndarray] = []
        self._ids: List[np.ndarray] = []
        self._identities: List[np.ndarray] = []
        self._counts: List[np.ndarray] = []
        self._extras: Dict[str, List[np.ndarray]] = {k: [] for k in self.extra_fields}
        self._file_names: List[str] = []
        self._num_values = 0
        self._context = atomic_directory(self.out_dir) if atomic else None
        if atomic:
            self.work_dir = self._context.__enter__()
        else:
            os.makedirs(self.out_dir, exist_ok=False)
            self.work_dir = self.out_dir
        self._values_file = open(osp.join(self.work_dir, 'values.bin'), 'wb')
        self._committed = False

    def add(self, keys: np.ndarray, values: np.ndarray, counts: Sequence[int],
            image_ids: Sequence[int], identities: Sequence,
            file_names: Optional[Sequence[str]] = None, **extras: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.float32).reshape(-1, self.key_dim)
        values = np.asarray(values).reshape(-1, self.value_dim)
        counts = np.asarray(counts, dtype=np.int64).reshape(-1)
        image_ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
        identities = as_identities(identities)
        if not len(keys) == len(counts) == len(image_ids) == len(identities):
            raise ValueError(f'{len(keys)} keys, {len(counts)} counts, {len(image_ids)} image '
                             f'ids and {len(identities)} identities must have the same length')
        if int(counts.sum()) != len(values):
            raise ValueError(f'counts sum to {int(counts.sum())} but {len(values)} values given')
        if set(extras) != set(self.extra_fields):
            raise ValueError(f'extras must be exactly {sorted(self.extra_fields)}, '
                             f'got {sorted(extras)}')
        for name, array in extras.items():
            array = np.asarray(array, dtype=self.extra_fields[name]).reshape(-1)
            if len(array) != len(values):
                raise ValueError(f'extra {name!r} has {len(array)} rows, expected {len(values)}')
            self._extras[name].append(array)
        self._keys.append(keys)
        self._counts.append(counts)
        self._ids.append(image_ids)
        self._identities.append(identities)
        names = list(file_names) if file_names is not None else [''] * len(keys)
        if len(names) != len(keys):
            raise ValueError(f'{len(names)} file names for {len(keys)} keys')
        self._file_names.extend(names)
        self._values_file.write(np.ascontiguousarray(values, dtype=self.value_dtype).tobytes())
        self._num_values += len(values)

    def commit(self, meta: Optional[dict] = None) -> str:
        """Build the index, write arrays and manifest, and publish the directory."""
        if self._committed:
            raise RuntimeError('bank already committed')
        try:
            self._values_file.close()
            keys = (np.concatenate(self._keys) if self._keys else
                    np.zeros((0, self.key_dim), np.float32))
            image_ids = (np.concatenate(self._ids) if self._ids else np.zeros(0, np.int64))
            if len(np.unique(image_ids)) != len(image_ids):
                raise ValueError(f'duplicate image ids in bank {self.out_dir}')
            counts = (np.concatenate(self._counts) if self._counts else np.zeros(0, np.int64))
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            save_npy(osp.join(self.work_dir, 'keys.npy'), keys)
            save_npy(osp.join(self.work_dir, 'image_ids.npy'), image_ids)
            save_npy(osp.join(self.work_dir, 'image_sha256.npy'),
                     np.concatenate(self._identities) if self._identities else
                     np.zeros(0, IDENTITY_DTYPE))
            save_npy(osp.join(self.work_dir, 'offsets.npy'), offsets)
            for name, parts in self._extras.items():
                array = (np.concatenate(parts) if parts else
                         np.zeros(0, self.extra_fields[name]))
                save_npy(osp.join(self.work_dir, f'{name}.npy'), array)
            index = build_index(self.index_cfg, keys)
            faiss.write_index(index, osp.join(self.work_dir, 'index.faiss'))

            files = file_records(self.work_dir, os.listdir(self.work_dir))
            manifest = dict(
                format=FORMAT_NAME,
                format_version=FORMAT_VERSION,
                kind=self.kind,
                created=datetime.datetime.now().isoformat(timespec='seconds'),
                num_entries=int(len(keys)),
                num_values=int(self._num_values),
                key_dim=self.key_dim,
                value_dim=self.value_dim,
                value_dtype=self.value_dtype.name,
                metric='inner_product',
                keys_normalized=True,
                index=self.index_cfg,
                extra_fields=self.extra_fields,
                keys_sha256=files['keys.npy']['sha256'],
                image_ids=image_ids.tolist(),
                file_names=self._file_names,
                files=files)
            manifest.update(meta or {})
            write_json(osp.join(self.work_dir, MANIFEST), manifest)
        except BaseException as exc:
            self._abort(exc)
            raise
        self._committed = True
        if self._context is not None:
            self._context.__exit__(None, None, None)
        return self.out_dir

    def abort(self) -> None:
        """Discard everything written so far."""
        self._abort(RuntimeError('aborted'))

    def _abort(self, exc: BaseException) -> None:
        if not self._values_file.closed:
            self._values_file.close()
        if self._context is not None and not self._committed:
            try:
                self._context.__exit__(type(exc), exc, None)
            except BaseException:
                pass
            self._context = None


class MemoryBank:
    """A read-only bank loaded from disk.

    Attributes:
        keys (np.ndarray): (N, D) float32 memory-mapped keys.
        values (np.ndarray): (M, C) memory-mapped values (float16 or float32).
        offsets (np.ndarray): (N + 1,) int64 CSR offsets of each entry's values.
        image_ids (np.ndarray): (N,) int64.
        identities (np.ndarray): (N,) ``S64`` sha256 of each image file (content identity).
        extras (dict[str, np.ndarray]): per-value arrays, each (M,).
        manifest (dict): the parsed manifest; ``manifest_sha256`` its checksum.
    """

    def __init__(self, path: str, index: faiss.Index, manifest: dict, manifest_sha256: str,
                 keys: np.ndarray, values: np.ndarray, offsets: np.ndarray,
                 image_ids: np.ndarray, identities: np.ndarray, extras: Dict[str, np.ndarray],
                 on_gpu: bool = False):
        self.path = path
        self.index = index
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self.keys = keys
        self.values = values
        self.offsets = offsets
        self.image_ids = image_ids
        self.identities = identities
        self.extras = extras
        self.on_gpu = on_gpu
        self._row_of_id = None
        self._rows_of_identity = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str, verify: bool = True, gpu_device: Optional[int] = None,
             index_overrides: Optional[dict] = None, in_memory: bool = False) -> 'MemoryBank':
        """Load and check a bank directory.

        Args:
            path (str): Bank directory (contains ``manifest.json``).
            verify (bool): Compare every file's sha256 with the manifest (catches
                silent corruption; sizes are always checked).
            gpu_device (int, optional): Move Flat/IVFPQ indices to this GPU when faiss has
                GPU support (each rank passes its own device).
            index_overrides (dict, optional): search-time settings, e.g.
                ``dict(ef_search=256)`` or ``dict(nprobe=64)``.
            in_memory (bool): Read values into RAM instead of memory-mapping.
        """
        path = osp.abspath(path)
        manifest, manifest_sha256 = read_manifest(path, FORMAT_NAME, FORMAT_VERSION,
                                                  'memory bank')
        validate_bank_manifest(path, manifest)  # before anything is memory-mapped
        check_files(path, manifest, verify)

        def npy(name):
            try:
                return np.load(osp.join(path, name), mmap_mode='r', allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise MemoryBankError(f'cannot read {osp.join(path, name)}: {exc}; rebuild the '
                                      'bank with tools/build_memory.py') from exc

        keys = npy('keys.npy')
        offsets = np.asarray(npy('offsets.npy'))
        image_ids = np.asarray(npy('image_ids.npy'))
        identities = np.asarray(npy('image_sha256.npy'))
        extras = {name: npy(f'{name}.npy') for name in manifest.get('extra_fields', {})}
        num, num_values = manifest['num_entries'], manifest['num_values']
        value_shape = (num_values, manifest['value_dim'])
        values_path = osp.join(path, 'values.bin')
        if num_values:
            values = np.memmap(values_path, dtype=manifest['value_dtype'], mode='r',
                               shape=value_shape)
            if in_memory:
                values = np.array(values)
        else:
            values = np.zeros(value_shape, manifest['value_dtype'])
        problems = []
        if keys.shape != (num, manifest['key_dim']):
            problems.append(f'keys.npy has shape {keys.shape}, expected '
                            f'{(num, manifest["key_dim"])}')
        if image_ids.shape != (num,):
            problems.append(f'image_ids.npy has shape {image_ids.shape}, expected {(num,)}')
        if identities.shape != (num,) or identities.dtype != IDENTITY_DTYPE:
            problems.append(f'image_sha256.npy has shape {identities.shape} and dtype '
                            f'{identities.dtype}, expected {(num,)} and {IDENTITY_DTYPE}')
        if (offsets.shape != (num + 1,) or offsets[0] != 0
                or offsets[-1] != num_values or np.any(np.diff(offsets) < 0)):
            problems.append('offsets.npy is not a valid CSR offset array for '
                            f'{num} entries and {num_values} values')
        for name, array in extras.items():
            if array.shape != (num_values,):
                problems.append(f'{name}.npy has shape {array.shape}, expected {(num_values,)}')
        if problems:
            raise MemoryBankError(f'memory bank {path} is inconsistent: ' + '; '.join(problems))

        index_path = osp.join(path, 'index.faiss')
        try:
            index = faiss.read_index(index_path)
        except RuntimeError as exc:
            raise MemoryBankError(f'cannot read FAISS index {index_path}: {exc}') from exc
        if index.ntotal != num or index.d != manifest['key_dim']:
            raise MemoryBankError(f'{index_path} holds {index.ntotal} keys of dim {index.d}, the '
                                  f'manifest records {num} of dim {manifest["key_dim"]}')
        index_cfg = dict(manifest['index'], **(index_overrides or {}))
        configure_search(index, index_cfg)
        on_gpu = False
        if gpu_device is not None:
            index, on_gpu = to_gpu_if_possible(index, index_cfg, device=gpu_device)
        return cls(path, index, manifest, manifest_sha256, keys, values, offsets, image_ids,
                   identities, extras, on_gpu)

    # ------------------------------------------------------------------ access
    @property
    def num_entries(self) -> int:
        return int(self.manifest['num_entries'])

    @property
    def num_values(self) -> int:
        return int(self.manifest['num_values'])

    @property
    def key_dim(self) -> int:
        return int(self.manifest['key_dim'])

    @property
    def value_dim(self) -> int:
        return int(self.manifest['value_dim'])

    @property
    def file_names(self) -> List[str]:
        return list(self.manifest.get('file_names', []))

    def search(self, queries: np.ndarray, k: int):
        """k nearest keys by inner product.

        Args:
            queries (np.ndarray): (B, D) float32, L2-normalised.
            k (int): Number of neighbours.

        Returns:
            tuple: ``scores`` (B, k) float32 and ``rows`` (B, k) int64 entry rows;
            ``-1`` where the bank has fewer than k entries.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.key_dim:
            raise ValueError(f'queries must be (B, {self.key_dim}) for bank {self.path}, '
                             f'got {queries.shape}')
        if k <= 0 or self.num_entries == 0:
            return (np.zeros((len(queries), max(k, 0)), np.float32),
                    np.full((len(queries), max(k, 0)), -1, np.int64))
        scores, rows = self.index.search(queries, k)
        return scores, rows.astype(np.int64)

    def values_of(self, row: int) -> np.ndarray:
        """(count, C) values of entry ``row`` (a view into the memory map)."""
        return self.values[self.offsets[row]:self.offsets[row + 1]]

    def value_slice(self, row: int) -> slice:
        return slice(int(self.offsets[row]), int(self.offsets[row + 1]))

    def row_of_image_id(self, image_id: int) -> int:
        """Row of ``image_id`` in the bank, or -1."""
        if self._row_of_id is None:
            self._row_of_id = {int(i): r for r, i in enumerate(self.image_ids)}
        return self._row_of_id.get(int(image_id), -1)

    def rows_of_identity(self, identity) -> List[int]:
        """Rows holding the image with this content identity (sha256 hex, str or bytes;
        several after an append that renumbered images already in the bank), or []."""
        identity = identity.encode() if isinstance(identity, str) else bytes(identity)
        if self._rows_of_identity is None:
            table: Dict[bytes, List[int]] = {}
            for row, ident in enumerate(self.identities.tolist()):
                table.setdefault(ident, []).append(row)
            self._rows_of_identity = table
        return self._rows_of_identity.get(identity, [])

    def summary(self) -> str:
        return (f'{self.manifest.get("kind", "bank")} bank {self.path}: '
                f'{self.num_entries} entries, {self.num_values} values of dim {self.value_dim} '
                f'({self.manifest["value_dtype"]}), keys dim {self.key_dim}, '
                f'index {self.manifest["index"]["type"]}{" on GPU" if self.on_gpu else ""}')
