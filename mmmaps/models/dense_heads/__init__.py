from .maps_head import MAPSMask2FormerHead, MemoryInputs
from .panoptic_segformer_head import PanopticSegFormerHead
from .panoptic_segformer_release_head import PanopticSegFormerReleaseHead

__all__ = ['MAPSMask2FormerHead', 'MemoryInputs', 'PanopticSegFormerHead',
           'PanopticSegFormerReleaseHead']
