from .memory_hook import MemoryHook

__all__ = ['MemoryHook']
