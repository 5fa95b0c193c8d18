"""Per-image query embeddings of a split, so training need not re-run the encoder.

Directory layout: ``manifest.json`` (format, encoder, dims, checksums),
``embeddings.npy`` (N, D) float32 and ``image_ids.npy`` (N,) int64.
"""
import datetime
import os
import os.path as osp
from typing import Optional, Sequence

import numpy as np
import torch

from .storage import (MANIFEST, atomic_directory, check_files, file_records, read_manifest,
                      save_npy, write_json)

FORMAT_NAME = 'mmmaps-query-cache'
FORMAT_VERSION = 1


class QueryEmbeddingCache:
    """Lookup of precomputed query embeddings by image id.

    Attributes:
        embeddings (np.ndarray): (N, D) float32, L2-normalised.
        image_ids (np.ndarray): (N,) int64.
        manifest (dict): includes ``encoder`` (the encoder's ``describe()``).
    """

    def __init__(self, path: str, embeddings: np.ndarray, image_ids: np.ndarray, manifest: dict,
                 manifest_sha256: str):
        self.path = path
        self.embeddings = embeddings
        self.image_ids = image_ids
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self._row = {int(i): r for r, i in enumerate(image_ids)}

    @staticmethod
    def write(out_dir: str, embeddings: np.ndarray, image_ids: Sequence[int],
              meta: Optional[dict] = None, atomic: bool = True) -> str:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        image_ids = np.asarray(image_ids, dtype=np.int64)
        if embeddings.ndim != 2 or len(embeddings) != len(image_ids):
            raise ValueError(f'embeddings {embeddings.shape} and image ids {image_ids.shape} '
                             'do not match')

        def _write(folder):
            os.makedirs(folder, exist_ok=True)
            save_npy(osp.join(folder, 'embeddings.npy'), embeddings)
            save_npy(osp.join(folder, 'image_ids.npy'), image_ids)
            files = file_records(folder, ('embeddings.npy', 'image_ids.npy'))
            manifest = dict(format=FORMAT_NAME, format_version=FORMAT_VERSION,
                            created=datetime.datetime.now().isoformat(timespec='seconds'),
                            num_entries=int(len(image_ids)), dim=int(embeddings.shape[1]),
                            files=files)
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
        check_files(path, manifest, verify)
        embeddings = np.load(osp.join(path, 'embeddings.npy'), allow_pickle=False)
        image_ids = np.load(osp.join(path, 'image_ids.npy'), allow_pickle=False)
        return cls(osp.abspath(path), embeddings, image_ids, manifest, manifest_sha256)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id) -> bool:
        return int(image_id) in self._row

    def lookup(self, image_ids: Sequence[int], device=None) -> torch.Tensor:
        """(B, D) float32 embeddings of ``image_ids``; KeyError naming the missing ids."""
        rows = [self._row.get(int(i), -1) for i in image_ids]
        missing = [int(i) for i, r in zip(image_ids, rows) if r < 0]
        if missing:
            raise KeyError(f'image ids {missing[:10]} are not in the query cache {self.path} '
                           f'({len(self)} images); was it built for this split?')
        return torch.from_numpy(self.embeddings[rows]).to(device)
