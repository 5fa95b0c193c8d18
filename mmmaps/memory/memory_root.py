"""A memory directory as written by ``tools/build_memory.py``::

    <root>/manifest.json   encoders, source dataset, statistics, lineage
    <root>/scene/          MemoryBank, one CLS value per image
    <root>/object/         MemoryBank, one pooled dense value per segment (optional)
    <root>/query_cache/    QueryEmbeddingCache of the split's query keys

A memory extended with ``tools/build_memory.py --append`` keeps the parent's
``source`` (what the leak guard and the evaluation refusal compare first) and
lists every annotation file in ``sources`` (each appended one with the
``img_prefix``/``seg_prefix`` it was read from); ``lineage`` has one entry per
append: ``parent`` (root, manifest_sha256, num_images), ``appended`` (ann_file,
ann_sha256, num_images, ...) and ``time``. Bank entries are in that order.
"""
import os.path as osp
from typing import List, Optional

from .bank import MemoryBank
from .query_cache import QueryEmbeddingCache
from .manifest_schema import validate_root_manifest
from .storage import read_manifest

FORMAT_NAME = 'mmmaps-memory'
FORMAT_VERSION = 2  # 2: banks and caches record each image's content identity

# encoder fields that define the embedding space (a memory built with other values
# holds vectors a model trained on this one cannot read)
ENCODER_IDENTITY = ('type', 'arch', 'weights_sha256', 'out_channels')


def encoder_identity(desc: Optional[dict]) -> Optional[dict]:
    """The :data:`ENCODER_IDENTITY` fields of an encoder's ``describe()`` (None stays None)."""
    if desc is None:
        return None
    return {k: desc[k] for k in ENCODER_IDENTITY if k in desc}


def read_root_manifest(root: str) -> dict:
    """The root manifest, with its sha256 under ``'_sha256'``."""
    manifest, sha = read_manifest(root, FORMAT_NAME, FORMAT_VERSION, 'memory directory')
    validate_root_manifest(root, manifest)
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

    def __init__(self, root: str, verify: bool = True, gpu_device: Optional[int] = None,
                 index_overrides: Optional[dict] = None, load_objects: bool = True):
        self.root = osp.abspath(root)
        self.manifest = read_root_manifest(self.root)
        banks = self.manifest['banks']
        self.scene_bank = self.object_bank = None
        if banks.get('scene'):
            self.scene_bank = MemoryBank.load(osp.join(self.root, banks['scene']),
                                              verify=verify, gpu_device=gpu_device,
                                              index_overrides=index_overrides)
        if load_objects and banks.get('object'):
            self.object_bank = MemoryBank.load(osp.join(self.root, banks['object']),
                                               verify=verify, gpu_device=gpu_device,
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
        """The annotation file the memory was first built from."""
        return self.manifest['source']

    @property
    def sources(self) -> List[dict]:
        """Every annotation file whose images are in the memory: :attr:`source`, then
        the ones appended (``tools/build_memory.py --append``), in order."""
        return list(self.manifest.get('sources') or [self.manifest['source']])

    @property
    def lineage(self) -> List[dict]:
        """One entry per append: parent root + manifest sha256, appended source, time."""
        return list(self.manifest.get('lineage') or [])

    @property
    def num_images(self) -> int:
        if self.scene_bank is not None:
            return self.scene_bank.num_entries
        return int(self.manifest.get('stats', {}).get('num_images',
                                                      self.source['num_images']))

    def signature(self) -> dict:
        """What identifies this memory and what a model trained with it depends on
        (checkpoint meta): checksums, size, encoder identities and dimensions."""
        sig = dict(root=self.root, manifest_sha256=self.manifest['_sha256'],
                   num_images=self.num_images,
                   key_encoder=encoder_identity(self.key_encoder),
                   dense_encoder=encoder_identity(self.dense_encoder))
        if self.scene_bank is not None:
            sig.update(scene_sha256=self.scene_bank.manifest_sha256,
                       key_dim=self.scene_bank.key_dim, scene_dim=self.scene_bank.value_dim)
        if self.object_bank is not None:
            sig.update(object_sha256=self.object_bank.manifest_sha256,
                       object_dim=self.object_bank.value_dim)
        return sig

    def describe_lineage(self) -> str:
        """'' for a memory built in one go, else one phrase per append."""
        parts = []
        for entry in self.lineage:
            added = entry.get('appended', {})
            parts.append(f'+{added.get("num_images")} images of {added.get("ann_file")} '
                         f'appended to {entry.get("parent", {}).get("root")} '
                         f'({entry.get("time")})')
        return '; '.join(parts)

    def summary(self) -> str:
        lines = [f'memory {self.root} (built from {self.source["ann_file"]}, '
                 f'{self.num_images} images)']
        if self.lineage:
            lines.append('  lineage: ' + self.describe_lineage())
        if self.scene_bank is not None:
            lines.append('  ' + self.scene_bank.summary())
        if self.object_bank is not None:
            lines.append('  ' + self.object_bank.summary())
        if self.query_cache is not None:
            lines.append(f'  query cache: {len(self.query_cache)} embeddings')
        return '\n'.join(lines)
