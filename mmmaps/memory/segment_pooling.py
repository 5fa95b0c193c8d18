"""Pool a dense feature map under ground-truth segment masks (MAPS object memory)."""
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def rgb_to_panoptic_id(pan_rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG (H, W, 3) RGB uint8 -> segment ids (H, W) int64."""
    pan = pan_rgb.astype(np.int64)
    return pan[..., 0] + 256 * pan[..., 1] + 256 * 256 * pan[..., 2]


def pool_segments(features: torch.Tensor, segment_map: torch.Tensor,
                  segment_ids: Sequence[int], normalize: bool = True,
                  segments_per_step: int = 16) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Average ``features`` under each segment, masks resized to the feature grid.

    Each binary mask is area-downsampled to the (h, w) grid, giving per-cell
    coverage weights, so a segment smaller than a grid cell still contributes
    through the cells it touches; a segment absent from ``segment_map`` has
    zero weight everywhere and is reported as empty.

    Args:
        features (Tensor): (C, h, w) dense features covering the whole image.
        segment_map (Tensor): (H, W) int64 segment ids of the image.
        segment_ids (Sequence[int]): S segment ids to pool.
        normalize (bool): L2-normalise each pooled vector.
        segments_per_step (int): Masks materialised at full resolution at once.

    Returns:
        tuple: ``pooled`` (S, C) float32 (zeros for empty segments), ``valid``
        (S,) bool, ``pixel_areas`` (S,) int64 mask areas at full resolution.
    """
    channels, height, width = features.shape
    ids = torch.as_tensor(list(segment_ids), dtype=torch.int64, device=segment_map.device)
    pooled = features.new_zeros((len(ids), channels), dtype=torch.float32)
    areas = torch.zeros(len(ids), dtype=torch.int64, device=segment_map.device)
    valid = torch.zeros(len(ids), dtype=torch.bool, device=segment_map.device)
    feats = features.float().to(segment_map.device)
    for start in range(0, len(ids), segments_per_step):
        chunk = ids[start:start + segments_per_step]
        masks = (segment_map[None] == chunk[:, None, None])
        areas[start:start + len(chunk)] = masks.flatten(1).sum(1)
        weights = F.adaptive_avg_pool2d(masks.float()[:, None], (height, width))[:, 0]
        total = weights.flatten(1).sum(1)
        ok = total > 0
        sums = torch.einsum('shw,chw->sc', weights, feats)
        pooled[start:start + len(chunk)] = torch.where(
            ok[:, None], sums / total.clamp_min(1e-12)[:, None], torch.zeros_like(sums))
        valid[start:start + len(chunk)] = ok
    if normalize:
        pooled = F.normalize(pooled, dim=1) * valid[:, None]
    return pooled, valid, areas
