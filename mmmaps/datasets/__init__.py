from . import transforms  # noqa: F401  (registers ImageCorruption)
from .synthetic_panoptic import (CLASSES, STUFF_CLASSES, SYNTHETIC_METAINFO, THING_CLASSES,
                                 generate_synthetic_panoptic)

__all__ = ['CLASSES', 'THING_CLASSES', 'STUFF_CLASSES', 'SYNTHETIC_METAINFO',
           'generate_synthetic_panoptic']
