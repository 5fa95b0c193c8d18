"""Frozen image encoders of the MAPS memory (keys, scene values, dense object features).

Every encoder is registered in ``mmdet.registry.MODELS``; build one from a config dict
with :func:`build_memory_encoder`.
"""
from .base import (BaseMemoryEncoder, DenseMemoryEncoder, GlobalMemoryEncoder,
                   build_memory_encoder)
from .clip_encoders import (CLIPCLSEncoder, CLIPImageDenseEncoder, MaskCLIPDenseEncoder,
                            TiledCLIPDenseEncoder)
from .convnet import ConvNetMaxPoolEncoder
from .dino_encoders import DINOCLSEncoder, DINODenseEncoder

__all__ = [
    'BaseMemoryEncoder', 'GlobalMemoryEncoder', 'DenseMemoryEncoder', 'build_memory_encoder',
    'CLIPCLSEncoder', 'DINOCLSEncoder', 'CLIPImageDenseEncoder', 'TiledCLIPDenseEncoder',
    'MaskCLIPDenseEncoder', 'DINODenseEncoder', 'ConvNetMaxPoolEncoder'
]
