from .corruption import ImageCorruption, corruption_names

__all__ = ['ImageCorruption', 'corruption_names']
