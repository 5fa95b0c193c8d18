"""Mask2Former decoder with memory cross-attention inside chosen layers."""
from typing import Optional, Sequence, Tuple

from mmcv.cnn import build_norm_layer
from mmengine.model import ModuleList
from torch import Tensor

from mmdet.models.layers.transformer.mask2former_layers import (
    Mask2FormerTransformerDecoder, Mask2FormerTransformerDecoderLayer)

from .memory_attention import MemoryCrossAttention


class MAPSTransformerDecoderLayer(Mask2FormerTransformerDecoderLayer):
    """Mask2Former layer (masked cross-attn -> self-attn -> FFN) plus memory attention.

    The memory cross-attention (Eq. 1) sits right after the masked cross-attention
    to the image features and before the self-attention: each query first looks at
    its own image region, then consults the retrieved memory with that
    region-aware state, and the self-attention that follows lets what one query
    took from memory inform the others. With no memory set (or ``memory_dims``
    None) the computation is exactly Mask2Former's.

    Args:
        memory_dims (int, optional): Dimension of the memory this layer attends to;
            None builds a plain Mask2Former layer.
        memory_num_heads (int): Heads of the memory attention.
        extra_self_attn (bool): Add an Eq.-1-style attention of the queries over
            themselves instead (the "Mask2Former (6)/(9)" extra-layer baseline).
        **kwargs: Mask2FormerTransformerDecoderLayer arguments.

    ``forward(..., memory=(values (B, M, C_m), padding mask (B, M)))`` gives the
    layer its memory for this pass (``None``: none).
    """

    def __init__(self, memory_dims: Optional[int] = None, memory_num_heads: int = 1,
                 extra_self_attn: bool = False, **kwargs):
        super().__init__(**kwargs)
        if memory_dims is not None and extra_self_attn:
            raise ValueError('a layer takes memory or an extra self-attention, not both')
        self.memory_attn = (MemoryCrossAttention(self.embed_dims, memory_dims, memory_num_heads)
                            if memory_dims is not None else None)
        self.extra_attn = (MemoryCrossAttention(self.embed_dims, self.embed_dims,
                                                memory_num_heads) if extra_self_attn else None)

    def forward(self, query: Tensor, key: Tensor = None, value: Tensor = None,
                query_pos: Tensor = None, key_pos: Tensor = None, self_attn_mask: Tensor = None,
                cross_attn_mask: Tensor = None, key_padding_mask: Tensor = None,
                memory: Optional[Tuple[Tensor, Optional[Tensor]]] = None, **kwargs) -> Tensor:
        query = self.cross_attn(query=query, key=key, value=value, query_pos=query_pos,
                                key_pos=key_pos, attn_mask=cross_attn_mask,
                                key_padding_mask=key_padding_mask, **kwargs)
        query = self.norms[0](query)
        if self.memory_attn is not None and memory is not None:
            values, padding = memory
            query = self.memory_attn(query, values, padding)
        if self.extra_attn is not None:
            query = self.extra_attn(query, query)
        query = self.self_attn(query=query, key=query, value=query, query_pos=query_pos,
                               key_pos=query_pos, attn_mask=self_attn_mask, **kwargs)
        query = self.norms[1](query)
        query = self.ffn(query)
        return self.norms[2](query)


class MAPSTransformerDecoder(Mask2FormerTransformerDecoder):
    """Mask2Former decoder whose layer i gets ``memory_dims_per_layer[i]`` memory.

    Args:
        memory_dims_per_layer (Sequence[int | None]): one entry per layer.
        extra_self_attn_layers (Sequence[int]): layers with an extra attention.
        memory_num_heads (int): heads of the memory attentions.
    """

    def __init__(self, memory_dims_per_layer: Sequence[Optional[int]] = (),
                 extra_self_attn_layers: Sequence[int] = (), memory_num_heads: int = 1,
                 **kwargs):
        self._memory_dims_per_layer = list(memory_dims_per_layer)
        self._extra_layers = set(extra_self_attn_layers)
        self._memory_num_heads = memory_num_heads
        super().__init__(**kwargs)

    def _init_layers(self) -> None:
        dims = self._memory_dims_per_layer + [None] * (
            self.num_layers - len(self._memory_dims_per_layer))
        self.layers = ModuleList([
            MAPSTransformerDecoderLayer(memory_dims=dims[i],
                                        memory_num_heads=self._memory_num_heads,
                                        extra_self_attn=i in self._extra_layers,
                                        **self.layer_cfg) for i in range(self.num_layers)
        ])
        self.embed_dims = self.layers[0].embed_dims
        self.post_norm = build_norm_layer(self.post_norm_cfg, self.embed_dims)[1]
