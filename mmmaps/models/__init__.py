"""Models: MAPS (layers/, dense_heads/, detectors/)."""
from .dense_heads import *  # noqa: F401,F403
from .detectors import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
