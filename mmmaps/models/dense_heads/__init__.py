from .maps_head import MAPSMask2FormerHead, MemoryInputs

__all__ = ['MAPSMask2FormerHead', 'MemoryInputs']
