"""Per-image query embeddings of a split, so training need not re-run the encoder.

Directory layout: ``manifest.json`` (format, encoder, dims, checksums),
``embeddings.npy`` (N, D) float32 and ``image_ids.npy`` (N,) int64.
"""
import datetime
import json
import os.path as osp
from typing import Optional, Sequence

import numpy as np
import torch

from .bank import MANIFEST, MemoryBankError
from .storage import atomic_directory, save_npy, sha256_bytes, sha256_file, write_json

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
            import os
            os.makedirs(folder, exist_ok=True)
            save_npy(osp.join(folder, 'embeddings.npy'), embeddings)
            save_npy(osp.join(folder, 'image_ids.npy'), image_ids)
            files = {name: dict(bytes=osp.getsize(osp.join(folder, name)),
                                sha256=sha256_file(osp.join(folder, name)))
                     for name in ('embeddings.npy', 'image_ids.npy')}
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
        manifest_path = osp.join(path, MANIFEST)
        if not osp.isfile(manifest_path):
            raise MemoryBankError(f'{manifest_path} is missing: {path} is not a complete query '
                                  'embedding cache; rebuild it with tools/build_memory.py')
        with open(manifest_path, 'rb') as f:
            raw = f.read()
        manifest = json.loads(raw)
        if manifest.get('format') != FORMAT_NAME or \
                manifest.get('format_version') != FORMAT_VERSION:
            raise MemoryBankError(f'{manifest_path}: not a {FORMAT_NAME} v{FORMAT_VERSION} '
                                  'manifest')
        for name, info in manifest['files'].items():
            file_path = osp.join(path, name)
            if not osp.isfile(file_path) or osp.getsize(file_path) != info['bytes']:
                raise MemoryBankError(f'{file_path} is missing or has the wrong size '
                                      f'(expected {info["bytes"]} bytes)')
            if verify and sha256_file(file_path) != info['sha256']:
                raise MemoryBankError(f'{file_path} does not match the sha256 in {manifest_path}')
        embeddings = np.load(osp.join(path, 'embeddings.npy'), allow_pickle=False)
        image_ids = np.load(osp.join(path, 'image_ids.npy'), allow_pickle=False)
        return cls(osp.abspath(path), embeddings, image_ids, manifest, sha256_bytes(raw))

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
