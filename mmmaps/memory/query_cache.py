"""Per-image query keys of a split, so training need not re-run the key encoder.

Directory layout: ``manifest.json`` (format, encoder, dims, checksums),
``embeddings.npy`` (N, D) float32, ``image_ids.npy`` (N,) int64 and ``image_sha256.npy``
(N,) ``S64``: the content identity of each image. Keys are served by identity only: an image
id names a file in one annotation file (COCO's ids and the 1..N ids of converted datasets
collide), the bytes name the picture.
"""
import datetime
import os
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .bank import IDENTITY_DTYPE, as_identities
from .manifest_schema import validate_cache_manifest
from .storage import (MANIFEST, MemoryBankError, atomic_directory, check_files, file_records,
                      read_manifest, save_npy, write_json)

FORMAT_NAME = 'mmmaps-query-cache'
FORMAT_VERSION = 2  # 2: image_sha256.npy, served by identity


class QueryEmbeddingCache:
    """Precomputed query keys, looked up by image content identity.

    Attributes:
        embeddings (np.ndarray): (N, D) float32, L2-normalised.
        image_ids (np.ndarray): (N,) int64 (for display; never used to serve a key).
        identities (np.ndarray): (N,) ``S64`` sha256 of each image file.
        manifest (dict): includes ``encoder`` (the encoder's ``describe()``).
    """

    def __init__(self, path: str, embeddings: np.ndarray, image_ids: np.ndarray,
                 identities: np.ndarray, manifest: dict, manifest_sha256: str):
        self.path = path
        self.embeddings = embeddings
        self.image_ids = image_ids
        self.identities = identities
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self._row = {ident: r for r, ident in enumerate(identities.tolist())}

    @staticmethod
    def write(out_dir: str, embeddings: np.ndarray, image_ids: Sequence[int],
              identities: Sequence, meta: Optional[dict] = None, atomic: bool = True) -> str:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        image_ids = np.asarray(image_ids, dtype=np.int64)
        identities = as_identities(identities)
        if embeddings.ndim != 2 or not len(embeddings) == len(image_ids) == len(identities):
            raise ValueError(f'embeddings {embeddings.shape}, image ids {image_ids.shape} and '
                             f'identities {identities.shape} do not match')

        def _write(folder):
            os.makedirs(folder, exist_ok=True)
            names = ('embeddings.npy', 'image_ids.npy', 'image_sha256.npy')
            for name, array in zip(names, (embeddings, image_ids, identities)):
                save_npy(osp.join(folder, name), array)
            manifest = dict(format=FORMAT_NAME, format_version=FORMAT_VERSION,
                            created=datetime.datetime.now().isoformat(timespec='seconds'),
                            num_entries=int(len(image_ids)), dim=int(embeddings.shape[1]),
                            files=file_records(folder, names))
            manifest.update(meta or {})
            write_json(osp.join(folder, MANIFEST), manifest)

        if atomic:
            with atomic_directory(out_dir) as tmp:
                _write(tmp)
        else:
            _write(out_dir)
        return osp.abspath(out_dir)

    @classmethod
    def load(cls, path: str, verify: bool = True) -> 'QueryEmbeddingCache':
        manifest, manifest_sha256 = read_manifest(path, FORMAT_NAME, FORMAT_VERSION,
                                                  'query embedding cache')
        validate_cache_manifest(path, manifest)
        check_files(path, manifest, verify)
        arrays = [np.load(osp.join(path, name), allow_pickle=False)
                  for name in ('embeddings.npy', 'image_ids.npy', 'image_sha256.npy')]
        embeddings, image_ids, identities = arrays
        if (embeddings.ndim != 2 or not len(embeddings) == len(image_ids) == len(identities)
                or identities.dtype != IDENTITY_DTYPE):
            raise MemoryBankError(f'query cache {path} is inconsistent: embeddings '
                                  f'{embeddings.shape}, image ids {image_ids.shape}, identities '
                                  f'{identities.shape} {identities.dtype}')
        return cls(osp.abspath(path), embeddings, image_ids, identities, manifest,
                   manifest_sha256)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, identity) -> bool:
        return _as_key(identity) in self._row

    def lookup(self, identities: Sequence[Optional[str]],
               device=None) -> Tuple[torch.Tensor, List[bool]]:
        """Cached keys of the images with these identities.

        Returns:
            tuple: ``keys`` (B, D) float32 (zeros where not cached) and ``found`` (B,) bools
            (None identities are never found).
        """
        rows = [self._row.get(_as_key(i), -1) if i is not None else -1 for i in identities]
        found = [r >= 0 for r in rows]
        keys = np.zeros((len(rows), self.embeddings.shape[1]), np.float32)
        hit = [b for b, r in enumerate(rows) if r >= 0]
        if hit:
            keys[hit] = self.embeddings[[rows[b] for b in hit]]
        return torch.from_numpy(keys).to(device), found


def _as_key(identity) -> bytes:
    return identity.encode() if isinstance(identity, str) else bytes(identity)
