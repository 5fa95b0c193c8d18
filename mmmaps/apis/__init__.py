"""Inference and visualisation outside the Runner: the demo and the retrieval viewer."""
from .demo import DemoError, write_demo_output
from .inference import (dataset_meta_of, inference_panoptic, init_panoptic_model,
                        pipeline_without_annotations, uses_memory)
from .retrievals import BankImages, SourceSegments, encode_images, retrieved_objects
from .visualization import (add_caption, draw_panoptic, panoptic_segments, read_rgb,
                            retrieval_panel, tile, write_png_atomic)

__all__ = [
    'dataset_meta_of', 'inference_panoptic', 'init_panoptic_model',
    'pipeline_without_annotations', 'uses_memory', 'BankImages', 'SourceSegments',
    'encode_images', 'retrieved_objects', 'add_caption', 'draw_panoptic', 'panoptic_segments',
    'read_rgb', 'retrieval_panel', 'tile', 'write_png_atomic', 'DemoError', 'write_demo_output'
]
