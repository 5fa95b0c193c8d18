"""ONNX export and onnxruntime inference (Mask2Former, MAPS, Panoptic SegFormer).

``onnx`` and ``onnxruntime`` are optional (``requirements/deploy.txt``); they are imported
only when an export or a session is made, with a clear error when missing.
"""
from .errors import CheckpointMismatchError, DeploymentError, require_onnx
from .export import (OPSET, default_export_shape, export_onnx, load_checkpoint_strict,
                     read_export)
from .graphs import KeyEncoderGraph, Mask2FormerGraph, PanopticSegFormerGraph, model_family
from .runtime import (ONNXKeyEncoder, ONNXPanopticPredictor, ONNXRuntimePanopticModel,
                      onnx_model_config)

__all__ = [
    'CheckpointMismatchError', 'DeploymentError', 'require_onnx', 'OPSET', 'export_onnx',
    'read_export', 'load_checkpoint_strict', 'default_export_shape', 'KeyEncoderGraph',
    'Mask2FormerGraph', 'PanopticSegFormerGraph', 'model_family', 'ONNXKeyEncoder',
    'ONNXPanopticPredictor', 'ONNXRuntimePanopticModel', 'onnx_model_config'
]
