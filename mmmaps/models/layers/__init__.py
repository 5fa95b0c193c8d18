from .maps_decoder_layer import MAPSTransformerDecoder, MAPSTransformerDecoderLayer
from .memory_attention import MemoryCrossAttention

__all__ = ['MemoryCrossAttention', 'MAPSTransformerDecoderLayer', 'MAPSTransformerDecoder']
