"""Segment pooling against a hand-written per-cell coverage reference."""
import math

import numpy as np
import torch

from mmmaps.memory.segment_pooling import pool_segments, rgb_to_panoptic_id


def reference_pool(features, segment_map, segment_id):
    """Weighted mean with weights = fraction of each grid cell covered by the segment,
    cells spanning the same pixel ranges as adaptive average pooling."""
    channels, h, w = features.shape
    height, width = segment_map.shape
    mask = (segment_map == segment_id).astype(np.float64)
    weights = np.zeros((h, w))
    for i in range(h):
        y0, y1 = (i * height) // h, math.ceil((i + 1) * height / h)
        for j in range(w):
            x0, x1 = (j * width) // w, math.ceil((j + 1) * width / w)
            weights[i, j] = mask[y0:y1, x0:x1].mean()
    if weights.sum() == 0:
        return None
    pooled = (features * weights).sum((1, 2)) / weights.sum()
    return pooled / np.linalg.norm(pooled)


def test_pool_segments_matches_reference():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((6, 7, 9)).astype(np.float32)
    segment_map = np.zeros((50, 61), np.int64)
    segment_map[5:30, 10:40] = 3
    segment_map[31:33, 50:52] = 7  # a 2x2 segment, smaller than a grid cell
    segment_map[40:, :] = 9
    ids = [0, 3, 7, 9, 11]  # 11 does not occur: empty
    pooled, valid, areas = pool_segments(torch.from_numpy(features),
                                         torch.from_numpy(segment_map), ids,
                                         segments_per_step=2)
    assert valid.tolist() == [True, True, True, True, False]
    assert areas.tolist() == [int((segment_map == i).sum()) for i in ids]
    for n, seg in enumerate(ids[:4]):
        np.testing.assert_allclose(pooled[n].numpy(), reference_pool(features, segment_map, seg),
                                   atol=1e-5)
    assert (pooled[4] == 0).all()


def test_rgb_to_panoptic_id():
    rgb = np.array([[[1, 2, 3], [255, 0, 0]]], np.uint8)
    assert rgb_to_panoptic_id(rgb).tolist() == [[1 + 2 * 256 + 3 * 65536, 255]]
