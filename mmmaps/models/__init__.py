"""Models: MAPS and Panoptic SegFormer.

layers/ (memory attention, MAPS decoder layers, PSF attention-map mask decoder),
dense_heads/ (MAPS head, PSF head), detectors/ (MAPS, PanopticSegFormer),
seg_heads/ (mask-wise merging post-processing), task_modules/ (match costs),
losses/ (per-query-set losses), utils/ (panoptic targets, query filtering).
"""
from .dense_heads import *  # noqa: F401,F403
from .detectors import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .seg_heads import *  # noqa: F401,F403
from .task_modules import *  # noqa: F401,F403
from .utils import *  # noqa: F401,F403
