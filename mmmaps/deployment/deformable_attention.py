"""Multi-scale deformable attention without GridSample (issue 26, a building block of the
ONNX export: ``export_onnx(..., deformable_attention=...)``).

mmcv's CPU path (``multi_scale_deformable_attn_pytorch``) samples each level with
``F.grid_sample``, which exports as one ONNX GridSample per level; onnxruntime's GridSample
is slow on the CPU and has no CUDA kernel, and TensorRT miscomputes GridSample-decomposed
deformable attention. :func:`multi_scale_deformable_attn_gather` computes the same function
(bilinear sampling, ``align_corners=False``, zeros outside the map) from index arithmetic,
one ``Gather`` over a table of neighbouring key pairs (the left and right corner of a pixel
row in one row of the table, the values of every level and head at once) and one ``MatMul``
for the weighted sum: standard ONNX ops only.
"""
import contextlib

import torch
from torch import Tensor


def multi_scale_deformable_attn_gather(value: Tensor, value_spatial_shapes,
                                       sampling_locations: Tensor,
                                       attention_weights: Tensor) -> Tensor:
    """mmcv's ``multi_scale_deformable_attn_pytorch``, computed with gathers.

    Args:
        value (Tensor): (bs, num_keys, num_heads, head_dims), the levels' values one after
            the other (``num_keys`` = sum of h * w).
        value_spatial_shapes (Tensor | Sequence): (num_levels, 2), each level's (h, w).
        sampling_locations (Tensor): (bs, num_queries, num_heads, num_levels, num_points, 2),
            (x, y) in [0, 1] of each level's width and height; outside it samples zeros.
        attention_weights (Tensor): (bs, num_queries, num_heads, num_levels, num_points).

    Returns:
        Tensor: (bs, num_queries, num_heads * head_dims).
    """
    bs, num_keys, num_heads, head_dims = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    # shapes stay tensors: a dynamic-shape export computes them from the features
    shapes = _as_tensor(value_spatial_shapes, value)
    areas = shapes[:, 0] * shapes[:, 1]
    if not torch.jit.is_tracing() and (len(shapes) != num_levels or
                                       int(areas.sum()) != num_keys):
        raise ValueError(f'value_spatial_shapes {shapes.tolist()} do not match value '
                         f'({num_keys} keys) and sampling_locations ({num_levels} levels)')
    # every head's values of every level, one row per key: (bs * heads * keys, dims), then
    # pairs of neighbours: row r of `pairs` is (key r - 1, key r), zeros beyond either end,
    # so one gather fetches a sample's left and right corner of one pixel row at once
    keys = value.permute(0, 2, 1, 3).reshape(-1, head_dims)
    zero = keys.new_zeros(1, head_dims)
    padded = torch.cat([zero, keys, zero], 0)
    pairs = torch.cat([padded[:-1], padded[1:]], 1)  # (bs * heads * keys + 1, 2 * dims)
    dtype = sampling_locations.dtype
    heights = shapes[:, 0].to(dtype).view(1, 1, 1, num_levels, 1)
    widths = shapes[:, 1].to(dtype).view(1, 1, 1, num_levels, 1)
    starts = torch.cumsum(areas, 0) - areas
    # row of `pairs` whose right half is the first key of each (image, head, level) block:
    # (bs, heads, 1, levels, 1)
    block = (torch.arange(bs * num_heads, device=value.device).view(bs, num_heads, 1, 1, 1)
             * num_keys + starts.view(1, 1, 1, num_levels, 1) + 1)
    locations = sampling_locations.transpose(1, 2)  # (bs, heads, queries, levels, points, 2)
    # align_corners=False: pixel centres at (i + 0.5) / size
    x = locations[..., 0] * widths - 0.5
    y = locations[..., 1] * heights - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    # a corner outside the map weighs 0 (zeros padding); what its clamped index reads,
    # another row's pixel included, is multiplied by that 0
    left = (1 - fx) * ((x0 >= 0) & (x0 <= widths - 1)).to(dtype)
    right = fx * ((x0 >= -1) & (x0 <= widths - 2)).to(dtype)
    weights = attention_weights.transpose(1, 2)  # (bs, heads, queries, levels, points)
    top = (1 - fy) * ((y0 >= 0) & (y0 <= heights - 1)).to(dtype) * weights
    bottom = fy * ((y0 >= -1) & (y0 <= heights - 2)).to(dtype) * weights
    column = torch.minimum(torch.clamp(x0, min=-1), widths - 1)
    upper = torch.minimum(torch.clamp(y0, min=0), heights - 1)
    lower = torch.minimum(torch.clamp(y0 + 1, min=0), heights - 1)
    index = torch.stack([block + (upper * widths + column).long(),
                         block + (lower * widths + column).long()], -1)
    # (bs, heads, queries, levels * points * 4 corners, dims): top-left, top-right,
    # bottom-left, bottom-right of each sample
    corners = pairs[index.reshape(-1)].view(bs, num_heads, num_queries,
                                            num_levels * num_points * 4, head_dims)
    corner_weights = torch.stack([top * left, top * right, bottom * left, bottom * right],
                                 -1).view(bs, num_heads, num_queries, 1,
                                          num_levels * num_points * 4)
    out = torch.matmul(corner_weights, corners).squeeze(3)  # (bs, heads, queries, dims)
    return out.transpose(1, 2).reshape(bs, num_queries, num_heads * head_dims)



#: how an export computes mmcv's deformable attention: ``gather`` (this module),
#: ``grid_sample`` (mmcv's own CPU path, one ONNX GridSample per level) or ``mmdeploy`` (one
#: node of mmdeploy's TensorRT plugin op per attention layer; onnxruntime cannot run it)
DEFORMABLE_ATTENTION_KINDS = ('gather', 'grid_sample', 'mmdeploy')
#: the op mmdeploy's exporter emits for mmcv's MultiScaleDeformableAttnFunction, which its
#: TensorRT plugin library (``libmmdeploy_tensorrt_ops.so``) implements
MMDEPLOY_OP = 'mmdeploy::MMCVMultiScaleDeformableAttention'
MMDEPLOY_IM2COL_STEP = 64


class _MMDeployDeformableAttention(torch.autograd.Function):
    """Traced as one ``mmdeploy::MMCVMultiScaleDeformableAttention`` node with mmdeploy's
    inputs (value, spatial shapes, level start index, sampling locations, attention
    weights) and attribute (``im2col_step``). Its forward returns ``result``, the gather
    version computed outside it (a trace of ops inside a Function's forward breaks the
    exporter), so the trace knows the output; the node does not read it, and the exporter
    drops the ops that computed it."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights, result):
        return result.clone()

    @staticmethod
    def symbolic(g, value, spatial_shapes, level_start_index, sampling_locations,
                 attention_weights, result):
        return g.op(MMDEPLOY_OP, value, spatial_shapes, level_start_index,
                    sampling_locations, attention_weights, im2col_step_i=MMDEPLOY_IM2COL_STEP)


def multi_scale_deformable_attn_mmdeploy(value: Tensor, value_spatial_shapes,
                                         sampling_locations: Tensor,
                                         attention_weights: Tensor) -> Tensor:
    """:func:`multi_scale_deformable_attn_gather`, exported as mmdeploy's plugin op."""
    shapes = _as_tensor(value_spatial_shapes, value)
    areas = shapes[:, 0] * shapes[:, 1]
    result = multi_scale_deformable_attn_gather(value, shapes, sampling_locations,
                                                attention_weights)
    return _MMDeployDeformableAttention.apply(value, shapes, torch.cumsum(areas, 0) - areas,
                                              sampling_locations, attention_weights, result)


@contextlib.contextmanager
def exported_deformable_attention(kind: str):
    """Within the block, mmcv's CPU deformable attention is computed as ``kind`` (an ONNX
    export traces it).

    mmcv's ``MultiScaleDeformableAttention.forward`` (used by mmdet's pixel decoder and
    Panoptic SegFormer's encoder) calls ``multi_scale_deformable_attn_pytorch`` by its module
    name on the CPU; ``gather`` puts :func:`multi_scale_deformable_attn_gather` there for the
    duration of the trace (``mmdeploy``: :func:`multi_scale_deformable_attn_mmdeploy`), the way
    mmdeploy rewrites functions for export. Outside the block nothing changes.
    """
    if kind not in DEFORMABLE_ATTENTION_KINDS:
        raise ValueError(f'deformable attention {kind!r}: expected one of '
                         f'{DEFORMABLE_ATTENTION_KINDS}')
    if kind == 'grid_sample':
        yield
        return
    from mmcv.ops import multi_scale_deform_attn
    original = multi_scale_deform_attn.multi_scale_deformable_attn_pytorch
    multi_scale_deform_attn.multi_scale_deformable_attn_pytorch = (
        multi_scale_deformable_attn_gather if kind == 'gather' else
        multi_scale_deformable_attn_mmdeploy)
    try:
        yield
    finally:
        multi_scale_deform_attn.multi_scale_deformable_attn_pytorch = original


def _as_tensor(shapes, value: Tensor) -> Tensor:
    if isinstance(shapes, Tensor):
        return shapes.long()
    return torch.tensor(shapes, dtype=torch.long, device=value.device)
