"""FAISS indices over L2-normalised keys, searched by inner product (= cosine).

``index_cfg`` selects the structure:

- ``dict(type='HNSW', M=32, ef_construction=200, ef_search=128)``: the default,
  a graph index (``IndexHNSWFlat``); approximate, no training, CPU only in FAISS.
- ``dict(type='Flat')``: exact search (``IndexFlatIP``), moved to the GPU when
  faiss-gpu is installed and ``use_gpu`` is set.
- ``dict(type='IVFPQ', nlist=1024, m=64, nbits=8, nprobe=32)``: compressed
  inverted lists for very large banks (needs ``~39 * nlist`` keys to train).
"""
import copy
from typing import Optional

import faiss
import numpy as np

DEFAULT_INDEX = dict(type='HNSW', M=32, ef_construction=200, ef_search=128)
_TYPES = ('HNSW', 'Flat', 'IVFPQ')


def normalize_index_cfg(index_cfg: Optional[dict]) -> dict:
    """Fill defaults and validate an index config."""
    cfg = copy.deepcopy(DEFAULT_INDEX if index_cfg is None else dict(index_cfg))
    kind = cfg.get('type')
    if kind not in _TYPES:
        raise ValueError(f'memory index type must be one of {_TYPES}, got {kind!r}')
    if kind == 'HNSW':
        for key, value in DEFAULT_INDEX.items():
            cfg.setdefault(key, value)
    elif kind == 'IVFPQ':
        cfg.setdefault('nlist', 1024)
        cfg.setdefault('m', 64)
        cfg.setdefault('nbits', 8)
        cfg.setdefault('nprobe', 32)
    return cfg


def build_index(index_cfg: Optional[dict], keys: np.ndarray) -> faiss.Index:
    """Build and fill an inner-product index over ``keys`` (N, D) float32."""
    cfg = normalize_index_cfg(index_cfg)
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    num, dim = keys.shape
    if cfg['type'] == 'HNSW':
        index = faiss.IndexHNSWFlat(dim, int(cfg['M']), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(cfg['ef_construction'])
    elif cfg['type'] == 'Flat':
        index = faiss.IndexFlatIP(dim)
    else:
        if dim % int(cfg['m']):
            raise ValueError(f'IVFPQ: key dim {dim} must be divisible by m={cfg["m"]}')
        min_train = 39 * int(cfg['nlist'])
        if num < min_train:
            raise ValueError(f'IVFPQ with nlist={cfg["nlist"]} needs at least {min_train} keys '
                             f'to train, the bank has {num}; lower nlist or use HNSW/Flat')
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, int(cfg['nlist']), int(cfg['m']),
                                 int(cfg['nbits']), faiss.METRIC_INNER_PRODUCT)
        index.train(keys)
    if num:
        index.add(keys)
    configure_search(index, cfg)
    return index


def configure_search(index: faiss.Index, index_cfg: dict) -> None:
    """Apply the search-time knobs (efSearch, nprobe) of ``index_cfg``."""
    cfg = normalize_index_cfg(index_cfg)
    base = faiss.downcast_index(index)
    if cfg['type'] == 'HNSW' and hasattr(base, 'hnsw'):
        base.hnsw.efSearch = int(cfg['ef_search'])
    elif cfg['type'] == 'IVFPQ' and hasattr(base, 'nprobe'):
        base.nprobe = int(cfg['nprobe'])


def gpu_available() -> bool:
    """Whether this FAISS build has GPU support and sees a GPU."""
    return hasattr(faiss, 'StandardGpuResources') and faiss.get_num_gpus() > 0


def to_gpu_if_possible(index: faiss.Index, index_cfg: dict, device: int = 0):
    """Move Flat/IVFPQ indices to the GPU with faiss-gpu; HNSW has no GPU version.

    Returns ``(index, on_gpu)``.
    """
    cfg = normalize_index_cfg(index_cfg)
    if cfg['type'] == 'HNSW' or not gpu_available():
        return index, False
    resources = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(resources, device, index)
    gpu_index.referenced_resources = resources  # keep alive as long as the index
    return gpu_index, True
