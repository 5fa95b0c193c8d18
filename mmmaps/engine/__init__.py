from .hooks import *  # noqa: F401,F403
from .hooks import __all__ as _hooks
from .runner import MMMapsRunner

__all__ = list(_hooks) + ['MMMapsRunner']
