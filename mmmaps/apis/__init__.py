"""Inference and visualisation outside the Runner: the demo and the retrieval viewer."""
from .inference import (KeyEncoderModel, RecordingRetriever, dataset_meta_of,
                        inference_panoptic, init_panoptic_model, load_memory, memory_hook_cfg,
                        pipeline_without_annotations, uses_memory)
from .retrievals import (BankImages, SourceSegments, encode_images, memory_ann_sha256s,
                         query_cache_for, retrieved_objects, same_encoder)
from .visualization import (add_caption, draw_panoptic, panoptic_segments, read_rgb, tile,
                            write_png_atomic)

__all__ = [
    'KeyEncoderModel', 'RecordingRetriever', 'dataset_meta_of', 'inference_panoptic',
    'init_panoptic_model', 'load_memory', 'memory_hook_cfg', 'pipeline_without_annotations',
    'uses_memory', 'BankImages', 'SourceSegments', 'encode_images', 'memory_ann_sha256s',
    'query_cache_for', 'retrieved_objects', 'same_encoder', 'add_caption', 'draw_panoptic',
    'panoptic_segments', 'read_rgb', 'tile', 'write_png_atomic'
]
