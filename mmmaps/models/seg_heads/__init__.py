from .mask_wise_merging_head import MaskWiseMergingFusionHead

__all__ = ['MaskWiseMergingFusionHead']
