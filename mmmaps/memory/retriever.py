"""Retrieval from the scene and object banks (MAPS section 3.2).

A query key retrieves the k most similar training images. Their scene values
(one per image) form the scene memory; the objects of those k images (all their
ground-truth segments, in retrieval order) form the object memory, capped at
``max_objects`` and padded.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .bank import MemoryBank

# Cosine similarity (inner product of L2-normalised keys) at or above which a retrieved memory
# image is taken for a near-duplicate of the query's picture (the same picture re-encoded or
# slightly resized, which the content identity does not recognise): the one threshold of
# tools/analysis/audit_memory.py's ``near_duplicates`` and of the MemoryHook's test-time
# warning. Measured by benchmarks/near_duplicate_similarity.py (benchmarks/results/
# near_duplicate_similarity.md) on the synthetic sets: every JPEG q97/q90 re-encode and
# 0.9x/1.1x resize keeps its key above 0.99975 with both the tiny memory's random-init
# ViT-S/16 and the pretrained stand-in; the nearest *distinct* image reaches 0.9992 with the
# ViT-S/16 (so 0.9995 separates them) but up to 0.9998 with the stand-in, for which 6 % of the
# synthetic val images (scene types of near-identical pictures) score above it too.
# Keys this close are near-identical whatever the cause: reported, never silently excluded.
NEAR_DUPLICATE_SIMILARITY = 0.9995


@dataclass
class RetrievalResult:
    """What one batch of queries retrieved. Masks follow torch's
    ``key_padding_mask`` convention: True marks a padded slot to ignore.

    Attributes:
        scene_values (Tensor): (B, k, C_s) float32.
        scene_mask (Tensor): (B, k) bool.
        image_ids (Tensor): (B, k) int64 image ids of the retrieved images, -1 = pad.
        scores (Tensor): (B, k) float32 inner products with the query.
        rows (Tensor): (B, k) int64 rows of the retrieved images in the scene bank, -1 = pad.
        object_values (Tensor | None): (B, K_obj, C_o) float32.
        object_mask (Tensor | None): (B, K_obj) bool.
        object_category_ids (Tensor | None): (B, K_obj) int64, -1 = pad.
        object_image_ids (Tensor | None): (B, K_obj) int64, -1 = pad.
        query_keys (Tensor | None): (B, D) the query keys (set by ExternalMemory).
        keys_from_cache (Tensor | None): (B,) bool, which keys came from a query cache.
    """
    scene_values: torch.Tensor
    scene_mask: torch.Tensor
    image_ids: torch.Tensor
    scores: torch.Tensor
    rows: torch.Tensor
    object_values: Optional[torch.Tensor] = None
    object_mask: Optional[torch.Tensor] = None
    object_category_ids: Optional[torch.Tensor] = None
    object_image_ids: Optional[torch.Tensor] = None
    query_keys: Optional[torch.Tensor] = None
    keys_from_cache: Optional[torch.Tensor] = field(default=None)

    def __len__(self) -> int:
        return len(self.scene_values)

    def _map(self, fn) -> 'RetrievalResult':
        return RetrievalResult(**{f.name: None if getattr(self, f.name) is None else
                                  fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def select(self, index: int) -> 'RetrievalResult':
        """The retrieval of query ``index`` (leading dim 1): what one data sample carries."""
        return self._map(lambda t: t[index:index + 1])

    @classmethod
    def cat(cls, results: List['RetrievalResult']) -> 'RetrievalResult':
        """Concatenate per-sample results of one batch (equal object slot counts)."""
        first = results[0]
        return RetrievalResult(**{
            f.name: None if getattr(first, f.name) is None else
            torch.cat([getattr(r, f.name) for r in results]) for f in dataclasses.fields(first)})

    def without_values(self) -> 'RetrievalResult':
        """The same record with empty value tensors (ids, scores, masks and keys stay):
        what a prediction keeps, so dumped predictions do not carry the memory."""
        return dataclasses.replace(
            self, scene_values=self.scene_values[..., :0],
            object_values=None if self.object_values is None else self.object_values[..., :0])

    def near_duplicates(self, threshold: float = NEAR_DUPLICATE_SIMILARITY) -> torch.Tensor:
        """(B, k) bool: retrieved (not padded) slots whose similarity with the query is at
        or above ``threshold`` (:data:`NEAR_DUPLICATE_SIMILARITY`): the memory holds the
        query's picture or a near-duplicate of it."""
        return (~self.scene_mask.detach().cpu()) & (
            self.scores.detach().float().cpu() >= threshold)

    def statistics(self, max_objects: int) -> Dict[str, float]:
        """Per-batch means: rank-1 scene similarity (``scene_sim``), mean similarity of the
        retrieved scenes (``scene_sim_k``), fraction of the ``max_objects`` object slots
        holding an object (``object_slots``), fraction of keys from a cache
        (``key_cache_hits``)."""
        found = ~self.scene_mask.detach().cpu()
        scores = self.scores.detach().float().cpu()
        num = found.sum(1)
        hit = num > 0
        stats = {}
        if hit.any():
            stats['scene_sim'] = float(scores[hit, 0].mean())
            stats['scene_sim_k'] = float(((scores * found).sum(1)[hit] / num[hit]).mean())
        if self.object_mask is not None and max_objects > 0:
            used = (~self.object_mask.detach().cpu()).sum(1).float() / max_objects
            stats['object_slots'] = float(used.mean())
        if self.keys_from_cache is not None:
            stats['key_cache_hits'] = float(self.keys_from_cache.float().mean())
        return stats


class MemoryRetriever:
    """Searches a scene bank and gathers scene and (optionally) object values.

    The settings come from :class:`~mmmaps.memory.ExternalMemory`, which owns them; this
    class only searches and gathers.

    Args:
        scene_bank (MemoryBank): One value per image.
        object_bank (MemoryBank, optional): One value per segment, keyed by the
            same image keys.
        max_objects (int): Cap K_obj on object slots; objects of better-ranked
            images come first.
        pad_objects_to_max (bool): Pad object slots to ``max_objects`` always
            (fixed shapes) instead of to the longest in the batch.
    """

    def __init__(self, scene_bank: MemoryBank, object_bank: Optional[MemoryBank] = None,
                 max_objects: int = 80, pad_objects_to_max: bool = False):
        self.scene_bank = scene_bank
        self.object_bank = object_bank
        self.max_objects = int(max_objects)
        self.pad_objects_to_max = pad_objects_to_max
        self._object_rows_shared = (
            object_bank is not None
            and object_bank.manifest['keys_sha256'] == scene_bank.manifest['keys_sha256']
            and np.array_equal(object_bank.image_ids, scene_bank.image_ids))
        if object_bank is not None and object_bank.key_dim != scene_bank.key_dim:
            raise ValueError(f'scene bank keys have dim {scene_bank.key_dim}, object bank keys '
                             f'{object_bank.key_dim}; both are queried with the same key')

    @property
    def key_dim(self) -> int:
        return self.scene_bank.key_dim

    def _select(self, queries: np.ndarray, k: int, exclude: Optional[Sequence[Optional[bytes]]],
                sample_from: Optional[int], rng: Optional[np.random.Generator]):
        """Rows (B, k) of the scene bank (-1 = none) and their scores. Rows holding a
        query's ``exclude`` identity are dropped; with ``sample_from`` = k', k rows are
        drawn uniformly from the top-k' that remain."""
        bank = self.scene_bank
        pool = sample_from if sample_from is not None else k
        excluded = [bank.rows_of_identity(e) if e is not None else []
                    for e in (exclude if exclude is not None else [None] * len(queries))]
        extra = max([len(e) for e in excluded] + [0])
        scores, rows = bank.search(queries, pool + extra)
        out_rows = np.full((len(queries), k), -1, np.int64)
        out_scores = np.zeros((len(queries), k), np.float32)
        for b in range(len(queries)):
            keep = (rows[b] >= 0) & ~np.isin(rows[b], excluded[b])
            cand_rows, cand_scores = rows[b][keep][:pool], scores[b][keep][:pool]
            if sample_from is not None and len(cand_rows) > k:
                pick = np.sort(rng.choice(len(cand_rows), size=k, replace=False))
                cand_rows, cand_scores = cand_rows[pick], cand_scores[pick]
            n = min(k, len(cand_rows))
            out_rows[b, :n] = cand_rows[:n]
            out_scores[b, :n] = cand_scores[:n]
        return out_rows, out_scores

    def query(self, keys: torch.Tensor, k: int,
              exclude: Optional[Sequence[Optional[bytes]]] = None,
              sample_from: Optional[int] = None, rng: Optional[np.random.Generator] = None,
              with_objects: bool = True) -> RetrievalResult:
        """Retrieve memory for a batch.

        Args:
            keys (Tensor): (B, D) L2-normalised query embeddings.
            k (int): Images retrieved per query.
            exclude (Sequence, optional): Per query, a content identity (sha256 hex as
                bytes) whose bank rows it must not retrieve, or None.
            sample_from (int, optional): k' > k: sample k of the top-k' with ``rng``.
            rng (np.random.Generator, optional): Generator of the sampling.
            with_objects (bool): Also gather the object memory.

        Returns:
            RetrievalResult: tensors on ``keys.device``.
        """
        if keys.ndim != 2 or keys.shape[1] != self.key_dim:
            raise ValueError(f'query keys must be (B, {self.key_dim}), got {tuple(keys.shape)}')
        if exclude is not None and len(exclude) != len(keys):
            raise ValueError(f'{len(exclude)} identities to exclude for {len(keys)} query keys')
        if sample_from is not None and (sample_from <= k or rng is None):
            raise ValueError(f'random sampling needs k\' > k and a generator, got '
                             f'k\'={sample_from}, k={k}')
        device = keys.device
        queries = keys.detach().float().cpu().numpy()
        rows, scores = self._select(queries, k, exclude, sample_from, rng)
        scene = self._gather_scene(rows)
        result = RetrievalResult(
            scene_values=torch.from_numpy(scene).to(device),
            scene_mask=torch.from_numpy(rows < 0).to(device),
            image_ids=torch.from_numpy(
                np.where(rows >= 0, self.scene_bank.image_ids[np.maximum(rows, 0)], -1)
                .astype(np.int64)).to(device),
            scores=torch.from_numpy(scores).to(device),
            rows=torch.from_numpy(rows).to(device))
        if with_objects and self.object_bank is not None:
            if self._object_rows_shared:
                obj_rows = rows
            else:
                obj_rows = np.array([[self.object_bank.row_of_image_id(i) if i >= 0 else -1
                                      for i in row] for row in result.image_ids.cpu().numpy()],
                                    dtype=np.int64)
            values, mask, cats, img = self._gather_objects(obj_rows)
            result.object_values = torch.from_numpy(values).to(device)
            result.object_mask = torch.from_numpy(mask).to(device)
            result.object_category_ids = torch.from_numpy(cats).to(device)
            result.object_image_ids = torch.from_numpy(img).to(device)
        return result

    def _gather_scene(self, rows: np.ndarray) -> np.ndarray:
        bank = self.scene_bank
        out = np.zeros(rows.shape + (bank.value_dim,), np.float32)
        for b, row in enumerate(rows):
            for j, r in enumerate(row):
                if r >= 0:
                    values = bank.values_of(r)
                    if len(values):
                        out[b, j] = values[0]
        return out

    def _gather_objects(self, rows: np.ndarray):
        bank = self.object_bank
        cats_all = bank.extras.get('category_ids')
        per_query = []
        for row in rows:
            found = [r for r in row if r >= 0]
            idx = np.concatenate([np.arange(*bank.offsets[r:r + 2]) for r in found] or
                                 [np.zeros(0, np.int64)])[:self.max_objects]
            owners = np.concatenate([np.full(bank.offsets[r + 1] - bank.offsets[r],
                                             bank.image_ids[r]) for r in found] or
                                    [np.zeros(0, np.int64)])[:self.max_objects]
            per_query.append((idx, owners))
        width = self.max_objects if self.pad_objects_to_max else max(
            [len(i) for i, _ in per_query] + [1])
        values = np.zeros((len(rows), width, bank.value_dim), np.float32)
        mask = np.ones((len(rows), width), bool)
        cats = np.full((len(rows), width), -1, np.int64)
        owner_ids = np.full((len(rows), width), -1, np.int64)
        for b, (idx, owners) in enumerate(per_query):
            n = len(idx)
            if n:
                values[b, :n] = bank.values[idx]
                mask[b, :n] = False
                owner_ids[b, :n] = owners
                if cats_all is not None:
                    cats[b, :n] = cats_all[idx]
        return values, mask, cats, owner_ids
