from .attention_mask_decoder import (AttentionMapCrossAttention, AttentionMapTail,
                                     AttentionMapToMask, AttentionMaskDecoder,
                                     AttentionMaskDecoderLayer, LevelwiseAttentionMapToMask,
                                     MaskDecoderOutput)
from .maps_decoder_layer import MAPSTransformerDecoder, MAPSTransformerDecoderLayer
from .memory_attention import MemoryCrossAttention

__all__ = [
    'MemoryCrossAttention', 'MAPSTransformerDecoderLayer', 'MAPSTransformerDecoder',
    'AttentionMapCrossAttention', 'AttentionMapToMask', 'AttentionMaskDecoderLayer',
    'AttentionMaskDecoder', 'AttentionMapTail', 'LevelwiseAttentionMapToMask',
    'MaskDecoderOutput'
]
