from .maps import MAPS
from .panoptic_segformer import PanopticSegFormer

__all__ = ['MAPS', 'PanopticSegFormer']
