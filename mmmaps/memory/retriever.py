"""Retrieval from the scene and object banks (MAPS section 3.2).

A query key retrieves the k most similar training images. Their scene values
(one per image) form the scene memory; the objects of those k images (all their
ground-truth segments, in retrieval order) form the object memory, capped at
``max_objects`` and padded.
"""
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from .bank import MemoryBank


@dataclass
class RetrievalResult:
    """What one batch of queries retrieved. Masks follow torch's
    ``key_padding_mask`` convention: True marks a padded slot to ignore.

    Attributes:
        scene_values (Tensor): (B, k, C_s) float32.
        scene_mask (Tensor): (B, k) bool.
        object_values (Tensor | None): (B, K_obj, C_o) float32.
        object_mask (Tensor | None): (B, K_obj) bool.
        image_ids (Tensor): (B, k) int64 image ids of the retrieved images, -1 = pad.
        scores (Tensor): (B, k) float32 inner products with the query.
        object_category_ids (Tensor | None): (B, K_obj) int64, -1 = pad.
        object_image_ids (Tensor | None): (B, K_obj) int64, -1 = pad.
    """
    scene_values: torch.Tensor
    scene_mask: torch.Tensor
    image_ids: torch.Tensor
    scores: torch.Tensor
    object_values: Optional[torch.Tensor] = None
    object_mask: Optional[torch.Tensor] = None
    object_category_ids: Optional[torch.Tensor] = None
    object_image_ids: Optional[torch.Tensor] = field(default=None)


class MemoryRetriever:
    """Queries a scene bank and (optionally) an object bank.

    Args:
        scene_bank (MemoryBank): One value per image.
        object_bank (MemoryBank, optional): One value per segment, keyed by the
            same image keys.
        k (int): Images retrieved per query (paper: 5).
        max_objects (int): Cap K_obj on object slots; objects of better-ranked
            images come first. Default ``16 * k``.
        pad_objects_to_max (bool): Pad object slots to ``max_objects`` always
            (fixed shapes) instead of to the longest in the batch.
        random_sampling (int, optional): k' > k. When set, training queries
            return k images sampled uniformly from the top-k' (Table 5).
        exclude_self (bool): Leak guard: drop the query's own image id from its
            results (search k + 1). Set when the bank was built from the
            training images.
        seed (int, optional): Seed of the sampling generator.
    """

    def __init__(self, scene_bank: MemoryBank, object_bank: Optional[MemoryBank] = None,
                 k: int = 5, max_objects: Optional[int] = None,
                 pad_objects_to_max: bool = False, random_sampling: Optional[int] = None,
                 exclude_self: bool = False, seed: Optional[int] = None):
        if k < 1:
            raise ValueError(f'k must be >= 1, got {k}')
        if random_sampling is not None and random_sampling <= k:
            raise ValueError(f'random_sampling (k\'={random_sampling}) must be larger than '
                             f'k={k}')
        self.scene_bank = scene_bank
        self.object_bank = object_bank
        self.k = k
        self.max_objects = 16 * k if max_objects is None else int(max_objects)
        self.pad_objects_to_max = pad_objects_to_max
        self.random_sampling = random_sampling
        self.exclude_self = exclude_self
        self._rng = np.random.default_rng(seed)
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

    def _select(self, bank: MemoryBank, queries: np.ndarray, image_ids, k: int,
                sample_from: Optional[int]):
        """Rows (B, k) of ``bank`` (-1 = none) and their scores; with ``sample_from``
        = k', k rows drawn uniformly from the top-k'."""
        sample = sample_from is not None
        pool = sample_from if sample else k
        drop_self = self.exclude_self and image_ids is not None
        scores, rows = bank.search(queries, pool + int(drop_self))
        out_rows = np.full((len(queries), k), -1, np.int64)
        out_scores = np.zeros((len(queries), k), np.float32)
        for b in range(len(queries)):
            keep = rows[b] >= 0
            if drop_self:
                keep &= bank.image_ids[np.maximum(rows[b], 0)] != int(image_ids[b])
            cand_rows, cand_scores = rows[b][keep][:pool], scores[b][keep][:pool]
            if sample and len(cand_rows) > k:
                pick = np.sort(self._rng.choice(len(cand_rows), size=k, replace=False))
                cand_rows, cand_scores = cand_rows[pick], cand_scores[pick]
            n = min(k, len(cand_rows))
            out_rows[b, :n] = cand_rows[:n]
            out_scores[b, :n] = cand_scores[:n]
        return out_rows, out_scores

    def query(self, keys: torch.Tensor, image_ids: Optional[Sequence[int]] = None,
              k: Optional[int] = None, training: bool = False,
              with_objects: bool = True,
              random_sampling: Optional[int] = None) -> RetrievalResult:
        """Retrieve memory for a batch.

        Args:
            keys (Tensor): (B, D) L2-normalised query embeddings.
            image_ids (Sequence[int], optional): The query images' ids, needed
                by the leak guard (``exclude_self``).
            k (int, optional): Overrides the configured k.
            training (bool): Enables random sampling when configured.
            with_objects (bool): Also gather the object memory.
            random_sampling (int, optional): k' for this call (overrides the
                configured one; used only when ``training``).

        Returns:
            RetrievalResult: tensors on ``keys.device``.
        """
        k = self.k if k is None else int(k)
        if keys.ndim != 2 or keys.shape[1] != self.key_dim:
            raise ValueError(f'query keys must be (B, {self.key_dim}), got {tuple(keys.shape)}')
        if image_ids is not None and len(image_ids) != len(keys):
            raise ValueError(f'{len(image_ids)} image ids for {len(keys)} query keys')
        device = keys.device
        queries = keys.detach().float().cpu().numpy()
        sample_from = (random_sampling or self.random_sampling) if training else None
        if sample_from is not None and sample_from <= k:
            raise ValueError(f'random sampling needs k\' > k, got k\'={sample_from}, k={k}')
        rows, scores = self._select(self.scene_bank, queries, image_ids, k, sample_from)
        scene = self._gather_scene(rows)
        result = RetrievalResult(
            scene_values=torch.from_numpy(scene).to(device),
            scene_mask=torch.from_numpy(rows < 0).to(device),
            image_ids=torch.from_numpy(
                np.where(rows >= 0, self.scene_bank.image_ids[np.maximum(rows, 0)], -1)
                .astype(np.int64)).to(device),
            scores=torch.from_numpy(scores).to(device))
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

    def signature(self) -> dict:
        """Identity of the loaded banks, stored in checkpoint meta."""
        sig = dict(scene=dict(path=self.scene_bank.path,
                              manifest_sha256=self.scene_bank.manifest_sha256))
        if self.object_bank is not None:
            sig['object'] = dict(path=self.object_bank.path,
                                 manifest_sha256=self.object_bank.manifest_sha256)
        return sig
