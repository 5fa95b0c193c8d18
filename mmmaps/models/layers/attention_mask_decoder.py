"""Panoptic SegFormer mask decoder: masks predicted from multi-scale multi-head attention maps.

Section 3.3.3 and Fig. B.4/B.5 of the Panoptic SegFormer paper. Each layer cross-attends
from the queries to the encoder tokens ``F`` (all levels concatenated); its attention maps
``A`` (N, h, L_1 + L_2 + L_3) are split per level, reshaped to the level's grid, upsampled
to the first (1/8) level, concatenated over heads and levels, and turned into one mask
map by a tiny per-pixel FC head (about 200 parameters). Two such heads: the paper's
reading (:class:`AttentionMapToMask`, mask logits) and the authors' release
(:class:`LevelwiseAttentionMapToMask`, non-negative mask scores).
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.transformer import FFN, MultiheadAttention
from mmengine.model import BaseModule, ModuleList
from torch import Tensor, nn

from mmdet.registry import MODELS


def level_shapes(spatial_shapes: Tensor) -> List[Tuple[int, int]]:
    """(num_levels, 2) tensor of (h, w) -> list of python int pairs (one host sync).

    While tracing (ONNX export) the pairs are 0-dim tensors instead, so that the graph
    computes the level sizes from the input size (dynamic height and width)."""
    if torch.jit.is_tracing():
        return [(h, w) for h, w in spatial_shapes]
    return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


def split_levels(tokens: Tensor, shapes: Sequence[Tuple[int, int]]) -> List[Tensor]:
    """Split the last axis of ``tokens`` (L = sum h_i * w_i, in level order) per level."""
    return list(tokens.split([h * w for h, w in shapes], dim=-1))


def _resize_to(level: Tensor, index: int, target) -> Tensor:
    """Levels after the first go to the first level's grid (bilinear). Decided by index,
    not by comparing sizes, so the traced graph works at any input size (the levels have
    different strides; an equal size would be an exact copy anyway)."""
    if index == 0:
        return level
    return F.interpolate(level, size=target, mode='bilinear', align_corners=False)


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


def _check_attention(attn: Tensor, shapes: Sequence[Tuple[int, int]], num_heads: int,
                     num_levels: int) -> None:
    if len(shapes) != num_levels or attn.shape[2] != num_heads:
        raise ValueError(f'expected {num_heads} heads x {num_levels} levels, got '
                         f'{attn.shape[2]} heads x {len(shapes)} levels')
    if not torch.jit.is_tracing() and sum(h * w for h, w in shapes) != attn.shape[3]:
        raise ValueError(f'attention length {attn.shape[3]} != sum of level sizes {shapes}')


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
        _check_attention(attn, shapes, self.num_heads, self.num_levels)
        batch, num_queries, num_heads, length = attn.shape
        attn = attn.reshape(batch * num_queries, num_heads, length)
        target = shapes[0]
        maps = [_resize_to(level.reshape(-1, num_heads, h, w), i, target)
                for i, (level, (h, w)) in enumerate(zip(split_levels(attn, shapes), shapes))]
        mask = self.fc(torch.cat(maps, dim=1))
        return mask.view(batch, num_queries, *target)


@MODELS.register_module()
class LevelwiseAttentionMapToMask(BaseModule):
    """The mask head of the authors' released Panoptic SegFormer.

    Per level, a ``Linear(h, h) + ReLU`` mixes the heads of every token at the level's own
    resolution; the levels are upsampled bilinearly to the first level's grid,
    concatenated (``h * num_levels`` channels) and a ``Linear(h * num_levels, 1) + ReLU``
    gives the mask. The output is a non-negative mask *score*, not a logit: the release
    trains it with a Dice loss on the raw values and thresholds it at 0.5 directly
    (``MaskWiseMergingFusionHead`` with ``mask_activation='identity'``). 8 heads x 3
    levels: 3 * 72 + 25 = 241 parameters.

    Shapes: attn (B, N, h, L) with L = sum(H_i * W_i) in level order, shapes a list of
    (H_i, W_i), first level the largest. Returns (B, N, H_1, W_1) mask scores >= 0.
    """

    def __init__(self, num_heads: int, num_levels: int, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_heads, self.num_levels = num_heads, num_levels
        self.level_fcs = nn.ModuleList([
            nn.Sequential(nn.Linear(num_heads, num_heads), nn.ReLU(inplace=True))
            for _ in range(num_levels)
        ])
        self.fc = nn.Sequential(nn.Linear(num_heads * num_levels, 1), nn.ReLU(inplace=True))

    def forward(self, attn: Tensor, shapes: Sequence[Tuple[int, int]]) -> Tensor:
        _check_attention(attn, shapes, self.num_heads, self.num_levels)
        batch, num_queries, num_heads, _ = attn.shape
        target = shapes[0]
        maps = []
        for i, (level, (h, w), level_fc) in enumerate(
                zip(split_levels(attn, shapes), shapes, self.level_fcs)):
            level = level_fc(level.transpose(2, 3))  # (B, N, h_i*w_i, heads): mixes heads
            level = level.transpose(2, 3).reshape(-1, num_heads, h, w)
            maps.append(_resize_to(level, i, target))
        mask = self.fc(torch.cat(maps, dim=1).permute(0, 2, 3, 1))  # (B*N, H_1, W_1, 1)
        return mask.view(batch, num_queries, *target)


class MaskDecoderOutput(NamedTuple):
    """One mask-decoder step: refined queries (B, N, C), or None for the mask-only tail of
    the released decoder, and masks (B, N, H_1, W_1)."""
    query: Optional[Tensor]
    masks: Tensor


@MODELS.register_module()
class AttentionMapTail(BaseModule):
    """A mask from one more attention map, without the rest of a layer (release's tail).

    Query/key projections only (no value, output, FFN): the logits
    ``q k^T / sqrt(d)`` of the final queries go through their own mask head. The
    release appends it to each mask decoder as a cheap extra mask layer; its mask is the
    decoder's final prediction.

    Shapes: query (B, N, C), memory (B, L, C). Returns (B, N, H_1, W_1).
    """

    def __init__(self, embed_dims: int, num_heads: int, mask_head: nn.Module,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embed_dims, embed_dims)
        self.k_proj = nn.Linear(embed_dims, embed_dims)
        self.mask_head = mask_head

    def forward(self, query: Tensor, memory: Tensor,
                shapes: Sequence[Tuple[int, int]]) -> Tensor:
        batch, num_queries, channels = query.shape
        q = self.q_proj(query).view(batch, num_queries, self.num_heads, -1).transpose(1, 2)
        k = self.k_proj(memory).view(batch, memory.shape[1], self.num_heads, -1).transpose(1, 2)
        logits = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1]**-0.5  # (B, h, N, L)
        return self.mask_head(logits.transpose(1, 2), shapes)


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
        ffn_act_cfg (dict): FFN activation (ReLU; the release uses GELU).
        norm_cfg (dict): Norm of the sub-layers (the release: LN with eps 1e-6).

    Shapes: query (B, N, C), query_pos (B, N, C) or None (added to the attention queries
    and keys), memory (B, L, C), memory_pos (B, L, C) or None (added to the keys),
    memory_mask (B, L) True = pad, self_attn_mask (N, N) True = blocked. Returns query
    (B, N, C) and attention logits (B, N, h, L).
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8,
                 feedforward_channels: int = 1024, dropout: float = 0.1,
                 self_attn: bool = False, self_attn_heads: int = 8,
                 ffn_act_cfg: dict = dict(type='ReLU', inplace=True),
                 norm_cfg: dict = dict(type='LN'), init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.self_attn = MultiheadAttention(
            embed_dims, self_attn_heads, attn_drop=dropout, proj_drop=dropout,
            batch_first=True) if self_attn else None
        self.cross_attn = AttentionMapCrossAttention(embed_dims, num_heads, attn_drop=dropout)
        self.cross_drop = nn.Dropout(dropout)
        self.ffn = FFN(embed_dims=embed_dims, feedforward_channels=feedforward_channels,
                       num_fcs=2, ffn_drop=dropout, act_cfg=ffn_act_cfg)
        self.norms = ModuleList(
            [build_norm_layer(norm_cfg, embed_dims)[1] for _ in range(3 if self_attn else 2)])

    def forward(self, query: Tensor, query_pos: Optional[Tensor], memory: Tensor,
                memory_pos: Optional[Tensor], memory_mask: Optional[Tensor] = None,
                self_attn_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        norms = iter(self.norms)
        if self.self_attn is not None:
            query = next(norms)(self.self_attn(
                query=query, key=query, value=query, query_pos=query_pos, key_pos=query_pos,
                attn_mask=self_attn_mask))
        attn_query = query if query_pos is None else query + query_pos
        key = memory if memory_pos is None else memory + memory_pos
        out, logits = self.cross_attn(attn_query, key, memory, key_padding_mask=memory_mask)
        query = next(norms)(query + self.cross_drop(out))
        query = next(norms)(self.ffn(query))
        return query, logits


_QUERY_POS_MODES = (None, 'attention', 'input')


@MODELS.register_module()
class AttentionMaskDecoder(BaseModule):
    """D_m mask-decoder layers, each with its own attention-map-to-mask head.

    Args:
        num_layers (int): D_m (6 in the paper).
        layer_cfg (dict): :class:`AttentionMaskDecoderLayer` arguments.
        num_levels (int): Encoder levels the decoder attends to: the first ``num_levels``
            of the encoded levels (3 = C3-C5; the release encodes 4 and attends to 3).
        mask_head (dict): Mask head type and arguments besides heads/levels:
            :class:`AttentionMapToMask` (``hidden_channels``) or
            :class:`LevelwiseAttentionMapToMask` (the release's).
        tail (bool): Append the release's mask-only :class:`AttentionMapTail`; its mask
            is then the decoder's final mask.
        query_pos (str | None): Where query positional embeddings enter: ``'attention'``
            (DETR: the attention queries and keys of every layer), ``'input'`` (the
            release: added to the input of every layer, so it also flows through the
            residual path) or None (not used).
        memory_pos (bool): Add the encoder's positional + level embedding to the keys
            (the release does not).

    ``forward`` returns one :class:`MaskDecoderOutput` per layer (deep supervision),
    then the tail's (query None); ``num_layers`` < D_m runs only the first layers
    (Table 10; no tail then).
    """

    def __init__(self, num_layers: int = 6, layer_cfg: dict = dict(), num_levels: int = 3,
                 mask_head: dict = dict(type='AttentionMapToMask', hidden_channels=8),
                 tail: bool = False, query_pos: Optional[str] = 'attention',
                 memory_pos: bool = True, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_layers < 1:
            raise ValueError(f'the mask decoder needs at least one layer, got {num_layers}')
        if query_pos not in _QUERY_POS_MODES:
            raise ValueError(f'query_pos must be one of {_QUERY_POS_MODES}, got {query_pos!r}')
        self.num_layers, self.num_levels = num_layers, num_levels
        self.query_pos, self.memory_pos = query_pos, memory_pos
        self.layers = ModuleList(
            [AttentionMaskDecoderLayer(**layer_cfg) for _ in range(num_layers)])
        self.embed_dims = self.layers[0].embed_dims
        num_heads = self.layers[0].num_heads

        def build_mask_head():
            return MODELS.build(dict(mask_head, num_heads=num_heads, num_levels=num_levels))

        self.mask_heads = ModuleList([build_mask_head() for _ in range(num_layers)])
        self.tail = AttentionMapTail(self.embed_dims, num_heads, build_mask_head()) \
            if tail else None

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                memory_mask: Optional[Tensor], spatial_shapes: Tensor,
                self_attn_mask: Optional[Tensor] = None,
                num_layers: Optional[int] = None) -> List[MaskDecoderOutput]:
        """``memory`` (B, L, C) holds the first ``num_levels`` levels of ``spatial_shapes``
        (num_levels, 2)."""
        num_layers = self.num_layers if num_layers is None else num_layers
        if not 1 <= num_layers <= self.num_layers:
            raise ValueError(f'num_layers must be in [1, {self.num_layers}], got {num_layers}')
        shapes = level_shapes(spatial_shapes)
        attn_pos = query_pos if self.query_pos == 'attention' else None
        key_pos = memory_pos if self.memory_pos else None
        outputs = []
        for layer, mask_head in zip(self.layers[:num_layers], self.mask_heads[:num_layers]):
            if self.query_pos == 'input':
                query = query + query_pos
            query, logits = layer(query, attn_pos, memory, key_pos, memory_mask,
                                  self_attn_mask)
            outputs.append(MaskDecoderOutput(query, mask_head(logits, shapes)))
        if self.tail is not None and num_layers == self.num_layers:
            tail_query = query if self.query_pos is None else query + query_pos
            key = memory if key_pos is None else memory + key_pos
            outputs.append(MaskDecoderOutput(None, self.tail(tail_query, key, shapes)))
        return outputs
