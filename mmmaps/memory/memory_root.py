"""A memory directory as written by ``tools/build_memory.py``::

    <root>/manifest.json   encoders, source dataset, statistics, lineage
    <root>/scene/          MemoryBank, one CLS value per image
    <root>/object/         MemoryBank, one pooled dense value per segment (optional)
    <root>/query_cache/    QueryEmbeddingCache of the split's query keys
"""
import os.path as osp
from typing import Optional

from .bank import MemoryBank
from .query_cache import QueryEmbeddingCache
from .storage import read_manifest

FORMAT_NAME = 'mmmaps-memory'
FORMAT_VERSION = 1


def read_root_manifest(root: str) -> dict:
    """The root manifest, with its sha256 under ``'_sha256'``."""
    manifest, sha = read_manifest(root, FORMAT_NAME, FORMAT_VERSION, 'memory directory')
    manifest['_sha256'] = sha
    return manifest


class MemoryRoot:
    """The banks of one memory directory, loaded and checked.

    Attributes:
        manifest (dict): root manifest (``manifest['_sha256']`` its checksum).
        scene_bank (MemoryBank | None): scene memory (None for a query cache only).
        object_bank (MemoryBank | None): object memory.
        query_cache (QueryEmbeddingCache | None): the split's query keys.
    """

    def __init__(self, root: str, verify: bool = True, use_gpu: bool = False,
                 index_overrides: Optional[dict] = None, load_objects: bool = True):
        self.root = osp.abspath(root)
        self.manifest = read_root_manifest(self.root)
        banks = self.manifest['banks']
        self.scene_bank = self.object_bank = None
        if banks.get('scene'):
            self.scene_bank = MemoryBank.load(osp.join(self.root, banks['scene']),
                                              verify=verify, use_gpu=use_gpu,
                                              index_overrides=index_overrides)
        if load_objects and banks.get('object'):
            self.object_bank = MemoryBank.load(osp.join(self.root, banks['object']),
                                               verify=verify, use_gpu=use_gpu,
                                               index_overrides=index_overrides)
        self.query_cache = None
        if self.manifest.get('query_cache'):
            self.query_cache = QueryEmbeddingCache.load(
                osp.join(self.root, self.manifest['query_cache']), verify=verify)

    @property
    def key_encoder(self) -> dict:
        return self.manifest['encoders']['key']

    @property
    def dense_encoder(self) -> Optional[dict]:
        return self.manifest['encoders'].get('dense')

    @property
    def source(self) -> dict:
        return self.manifest['source']

    def signature(self) -> dict:
        """Checksums identifying this memory (for checkpoint meta)."""
        sig = dict(root=self.root, manifest_sha256=self.manifest['_sha256'])
        if self.scene_bank is not None:
            sig['scene_sha256'] = self.scene_bank.manifest_sha256
        if self.object_bank is not None:
            sig['object_sha256'] = self.object_bank.manifest_sha256
        return sig

    def summary(self) -> str:
        lines = [f'memory {self.root} (built from {self.source["ann_file"]}, '
                 f'{self.source["num_images"]} images)']
        if self.scene_bank is not None:
            lines.append('  ' + self.scene_bank.summary())
        if self.object_bank is not None:
            lines.append('  ' + self.object_bank.summary())
        if self.query_cache is not None:
            lines.append(f'  query cache: {len(self.query_cache)} embeddings')
        return '\n'.join(lines)
