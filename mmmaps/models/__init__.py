"""Models: MAPS (layers/, dense_heads/, detectors/) and post-processing (seg_heads/)."""
from .dense_heads import *  # noqa: F401,F403
from .detectors import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .seg_heads import *  # noqa: F401,F403
