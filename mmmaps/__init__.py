"""mmmaps: MAPS and Panoptic SegFormer for MMDetection 3.x.

Importing the package (directly or through ``custom_imports`` in a config)
checks the OpenMMLab versions, registers every mmmaps module into mmdet's
registries and makes mmengine load checkpoints with torch's weights-only
unpickler (:mod:`mmmaps.utils.checkpoint_loading`).
"""
from .utils.version_check import check_openmmlab_versions
from .version import __version__

check_openmmlab_versions()

from .utils.checkpoint_loading import register_safe_checkpoint_loaders  # noqa: E402

register_safe_checkpoint_loaders()

from . import datasets, deployment, engine, evaluation, memory, models  # noqa: E402,F401,E501

__all__ = ['__version__']
