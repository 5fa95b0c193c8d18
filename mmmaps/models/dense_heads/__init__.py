from .maps_head import MAPSMask2FormerHead, MemoryInputs
from .panoptic_segformer_head import PanopticSegFormerHead

__all__ = ['MAPSMask2FormerHead', 'MemoryInputs', 'PanopticSegFormerHead']
