"""Checkpoint converters: published weights of other code bases -> mmmaps configs."""
from .common import ConversionError, check_against, expected_state, load_source_state_dict
from .panoptic_segformer_official import convert as convert_panoptic_segformer_official

__all__ = ['ConversionError', 'check_against', 'expected_state', 'load_source_state_dict',
           'convert_panoptic_segformer_official']
