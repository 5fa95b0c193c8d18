from .maps import MAPS

__all__ = ['MAPS']
