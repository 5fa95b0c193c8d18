"""Panoptic SegFormer mask decoder: masks predicted from multi-scale multi-head attention maps.

Section 3.3.3 and Fig. B.4/B.5 of the Panoptic SegFormer paper. Each layer cross-attends
from the queries to the encoder tokens ``F`` (all levels concatenated); its attention maps
``A`` (N, h, L_1 + L_2 + L_3) are split per level, reshaped to the level's grid, upsampled
to the first (1/8) level, concatenated over heads and levels, and turned into one mask
logit map by a tiny per-pixel FC head (about 200 parameters).
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.transformer import FFN, MultiheadAttention
from mmengine.model import BaseModule, ModuleList
from torch import Tensor, nn

from mmdet.registry import MODELS


def level_shapes(spatial_shapes: Tensor) -> List[Tuple[int, int]]:
    """(num_levels, 2) tensor of (h, w) -> list of python int pairs (one host sync)."""
    return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


@MODELS.register_module()
class AttentionMapCrossAttention(BaseModule):
    """Multi-head cross-attention that also returns its attention logits.

    ``softmax(q k^T / sqrt(d)) v`` as in ``nn.MultiheadAttention``, plus the
    pre-softmax logits ``q k^T / sqrt(d)`` that the mask head reads. The logits
    (not the softmax weights) are returned because a softmax over thousands of
    tokens squashes every map towards zero; the logits keep the per-token
    evidence on a usable scale for the ~200-parameter mask head.

    Args:
        embed_dims (int): Query/key/value channels C.
        num_heads (int): Heads h (C must be divisible by h).
        attn_drop (float): Dropout on the softmax weights.

    Shapes: query (B, N, C), key/value (B, L, C), key_padding_mask (B, L) with
    True on padded tokens. Returns output (B, N, C) and logits (B, N, h, L);
    padded tokens are excluded from the softmax but keep their raw logits.
    """

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float = 0.0,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims ({embed_dims}) must be divisible by num_heads '
                             f'({num_heads})')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embed_dims, embed_dims)
        self.k_proj = nn.Linear(embed_dims, embed_dims)
        self.v_proj = nn.Linear(embed_dims, embed_dims)
        self.out_proj = nn.Linear(embed_dims, embed_dims)
        self.attn_drop = nn.Dropout(attn_drop)

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        logits = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1]**-0.5  # (B, h, N, L)
        scores = logits
        if key_padding_mask is not None:
            scores = logits.masked_fill(key_padding_mask[:, None, None, :], float('-inf'))
        weights = self.attn_drop(scores.softmax(dim=-1))
        out = torch.matmul(weights, v).transpose(1, 2).flatten(2)  # (B, N, C)
        return self.out_proj(out), logits.transpose(1, 2)


@MODELS.register_module()
class AttentionMapToMask(BaseModule):
    """PSF Eq. 1-2 plus the tiny FC head: attention maps of every query -> one mask logit map.

    Split the token axis per level, reshape to (h, H_i, W_i), upsample bilinearly to the
    first level's grid (1/8 of the input), concatenate to ``h * num_levels`` channels and
    apply a per-pixel MLP ``h*levels -> hidden_channels -> 1`` (two 1x1 convolutions). With
    8 heads x 3 levels and ``hidden_channels=8`` this is 24*8+8 + 8+1 = 209 parameters (the
    paper's "200"); ``hidden_channels=0`` gives a single 1x1 convolution (25 parameters).

    Shapes: attn (B, N, h, L) with L = sum(H_i * W_i) in level order, shapes a list of
    (H_i, W_i), first level the largest. Returns (B, N, H_1, W_1) mask logits.
    """

    def __init__(self, num_heads: int, num_levels: int, hidden_channels: int = 8,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        in_channels = num_heads * num_levels
        self.num_heads, self.num_levels = num_heads, num_levels
        if hidden_channels:
            self.fc = nn.Sequential(
                nn.Conv2d(in_channels, hidden_channels, 1), nn.ReLU(inplace=True),
                nn.Conv2d(hidden_channels, 1, 1))
        else:
            self.fc = nn.Conv2d(in_channels, 1, 1)

    def forward(self, attn: Tensor, shapes: Sequence[Tuple[int, int]]) -> Tensor:
        batch, num_queries, num_heads, length = attn.shape
        if len(shapes) != self.num_levels or num_heads != self.num_heads:
            raise ValueError(f'expected {self.num_heads} heads x {self.num_levels} levels, got '
                             f'{num_heads} heads x {len(shapes)} levels')
        if sum(h * w for h, w in shapes) != length:
            raise ValueError(f'attention length {length} != sum of level sizes {shapes}')
        attn = attn.reshape(batch * num_queries, num_heads, length)
        target = shapes[0]
        maps, start = [], 0
        for h, w in shapes:
            level = attn[..., start:start + h * w].reshape(-1, num_heads, h, w)
            start += h * w
            if (h, w) != target:
                level = F.interpolate(level, size=target, mode='bilinear', align_corners=False)
            maps.append(level)
        mask = self.fc(torch.cat(maps, dim=1))
        return mask.view(batch, num_queries, *target)


@MODELS.register_module()
class AttentionMaskDecoderLayer(BaseModule):
    """One mask-decoder layer: [self-attention] -> cross-attention (maps kept) -> FFN.

    Post-norm as in DETR. Self-attention is optional (appendix B.3: dropping it does not
    hurt); when on, ``self_attn_mask`` keeps thing and stuff queries apart so query
    decoupling also holds inside the decoder.

    Args:
        embed_dims (int): C. num_heads (int): h of the cross-attention (Table B.5).
        feedforward_channels (int): FFN hidden size. dropout (float): residual dropout.
        self_attn (bool): Add a self-attention sub-layer.

    Shapes: query/query_pos (B, N, C), memory/memory_pos (B, L, C), memory_mask (B, L)
    True = pad, self_attn_mask (N, N) True = blocked. Returns query (B, N, C) and
    attention logits (B, N, h, L).
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8,
                 feedforward_channels: int = 1024, dropout: float = 0.1,
                 self_attn: bool = False, self_attn_heads: int = 8,
                 norm_cfg=dict(type='LN'), init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.self_attn = MultiheadAttention(
            embed_dims, self_attn_heads, attn_drop=dropout, proj_drop=dropout,
            batch_first=True) if self_attn else None
        self.cross_attn = AttentionMapCrossAttention(embed_dims, num_heads, attn_drop=dropout)
        self.cross_drop = nn.Dropout(dropout)
        self.ffn = FFN(embed_dims=embed_dims, feedforward_channels=feedforward_channels,
                       num_fcs=2, ffn_drop=dropout, act_cfg=dict(type='ReLU', inplace=True))
        self.norms = ModuleList(
            [build_norm_layer(norm_cfg, embed_dims)[1] for _ in range(3 if self_attn else 2)])

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                memory_mask: Optional[Tensor] = None,
                self_attn_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        norms = iter(self.norms)
        if self.self_attn is not None:
            query = next(norms)(self.self_attn(
                query=query, key=query, value=query, query_pos=query_pos, key_pos=query_pos,
                attn_mask=self_attn_mask))
        out, logits = self.cross_attn(query + query_pos, memory + memory_pos, memory,
                                      key_padding_mask=memory_mask)
        query = next(norms)(query + self.cross_drop(out))
        query = next(norms)(self.ffn(query))
        return query, logits


@MODELS.register_module()
class AttentionMaskDecoder(BaseModule):
    """D_m mask-decoder layers, each with its own attention-map-to-mask head.

    Args:
        num_layers (int): D_m (6 in the paper).
        layer_cfg (dict): :class:`AttentionMaskDecoderLayer` arguments.
        num_levels (int): Encoder feature levels (3 for C3-C5, 4 with an extra level).
        mask_hidden_channels (int): Hidden width of each :class:`AttentionMapToMask`.

    ``forward`` returns one (query (B, N, C), mask logits (B, N, H_1, W_1)) pair per layer
    (deep supervision); ``num_layers`` < D_m runs only the first layers (Table 10).
    """

    def __init__(self, num_layers: int = 6, layer_cfg: dict = dict(), num_levels: int = 3,
                 mask_hidden_channels: int = 8, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_layers < 1:
            raise ValueError(f'the mask decoder needs at least one layer, got {num_layers}')
        self.num_layers = num_layers
        self.layers = ModuleList(
            [AttentionMaskDecoderLayer(**layer_cfg) for _ in range(num_layers)])
        self.embed_dims = self.layers[0].embed_dims
        num_heads = self.layers[0].num_heads
        self.mask_heads = ModuleList([
            AttentionMapToMask(num_heads, num_levels, mask_hidden_channels)
            for _ in range(num_layers)
        ])

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                memory_mask: Optional[Tensor], spatial_shapes: Tensor,
                self_attn_mask: Optional[Tensor] = None,
                num_layers: Optional[int] = None) -> List[Tuple[Tensor, Tensor]]:
        num_layers = self.num_layers if num_layers is None else num_layers
        if not 1 <= num_layers <= self.num_layers:
            raise ValueError(f'num_layers must be in [1, {self.num_layers}], got {num_layers}')
        shapes = level_shapes(spatial_shapes)
        outputs = []
        for layer, mask_head in zip(self.layers[:num_layers], self.mask_heads[:num_layers]):
            query, logits = layer(query, query_pos, memory, memory_pos, memory_mask,
                                  self_attn_mask)
            outputs.append((query, mask_head(logits, shapes)))
        return outputs
