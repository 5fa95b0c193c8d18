"""Cross-attention from object queries to retrieved memory items (MAPS Eq. 1)."""
import math
from typing import Optional

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn


class MemoryCrossAttention(BaseModule):
    """``X_l = softmax(Q_l K_l^T / sqrt(d)) V_l + X_{l-1}`` with linear f_Q, f_K, f_V.

    Q = f_Q(X_{l-1}) comes from the queries, K = f_K(M) and V = f_V(M) from the
    retrieved memory M; heads split the embedding (d = embed_dims / num_heads)
    and are concatenated, with no output projection, as in Eq. 1. The cost is
    linear in the number of retrieved items. Padded memory slots get zero
    attention weight; a query whose memory is entirely padded is left unchanged.

    Args:
        embed_dims (int): C, query dimension (256 in Mask2Former).
        memory_dims (int): C_m, dimension of the retrieved values (512 for CLIP).
        num_heads (int): Heads; 1 is Eq. 1 literally.
        attn_drop (float): Dropout on the attention weights.

    Shapes:
        query (B, N, C), memory (B, M, C_m), key_padding_mask (B, M) bool with
        True = padded slot; output (B, N, C).
    """

    def __init__(self, embed_dims: int = 256, memory_dims: int = 512, num_heads: int = 1,
                 attn_drop: float = 0.0, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims {embed_dims} is not divisible by num_heads {num_heads}')
        self.embed_dims = embed_dims
        self.memory_dims = memory_dims
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embed_dims, embed_dims)
        self.k_proj = nn.Linear(memory_dims, embed_dims)
        self.v_proj = nn.Linear(memory_dims, embed_dims)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, query: Tensor, memory: Tensor,
                key_padding_mask: Optional[Tensor] = None) -> Tensor:
        batch, num_queries, _ = query.shape
        heads, head_dims = self.num_heads, self.embed_dims // self.num_heads
        q = self.q_proj(query).view(batch, num_queries, heads, head_dims).transpose(1, 2)
        k = self.k_proj(memory).view(batch, -1, heads, head_dims).transpose(1, 2)
        v = self.v_proj(memory).view(batch, -1, heads, head_dims).transpose(1, 2)
        logits = q @ k.transpose(-2, -1) / math.sqrt(head_dims)  # (B, h, N, M)
        if key_padding_mask is not None:
            logits = logits.masked_fill(key_padding_mask[:, None, None, :], float('-inf'))
        weights = logits.softmax(dim=-1)
        if key_padding_mask is not None:
            # all slots padded: softmax gives NaN; such queries receive no update
            empty = key_padding_mask.all(dim=1)[:, None, None, None]
            weights = weights.masked_fill(empty, 0.0)
        out = self.attn_drop(weights) @ v  # (B, h, N, d)
        return query + out.transpose(1, 2).reshape(batch, num_queries, self.embed_dims)
