"""mmmaps: MAPS and Panoptic SegFormer for MMDetection 3.x.

Importing the package (directly or through ``custom_imports`` in a config)
checks the OpenMMLab versions and registers every mmmaps module into mmdet's
registries.
"""
from .utils.version_check import check_openmmlab_versions
from .version import __version__

check_openmmlab_versions()

from . import datasets, engine, evaluation, memory, models  # noqa: E402,F401  (registration)

__all__ = ['__version__']
