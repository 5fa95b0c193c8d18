"""Checkpoint converters: published weights of other code bases -> mmmaps configs."""
from .common import ConversionError, check_against, expected_state, load_source_state_dict
from .mask2former_detectron2 import convert as convert_mask2former_detectron2
from .panoptic_segformer_official import convert as convert_panoptic_segformer_official

__all__ = ['ConversionError', 'check_against', 'expected_state', 'load_source_state_dict',
           'convert_mask2former_detectron2', 'convert_panoptic_segformer_official']
