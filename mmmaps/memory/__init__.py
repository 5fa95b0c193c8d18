"""The external memory of MAPS: frozen encoders, FAISS banks, retrieval."""
from .bank import BankWriter, MemoryBank, MemoryBankError
from .config_schema import MemoryConfigError, check_memory_cfg
from .encoders import *  # noqa: F401,F403
from .encoders import __all__ as _encoder_names
from .external_memory import ExternalMemory, build_external_memory
from .image_identity import ImageIdentities, image_sha256
from .memory_root import MemoryRoot
from .query_cache import QueryEmbeddingCache
from .retriever import MemoryRetriever, RetrievalResult

__all__ = [
    'BankWriter', 'MemoryBank', 'MemoryBankError', 'MemoryRoot', 'QueryEmbeddingCache',
    'MemoryRetriever', 'RetrievalResult', 'ExternalMemory', 'build_external_memory',
    'ImageIdentities', 'image_sha256', 'MemoryConfigError', 'check_memory_cfg'
] + list(_encoder_names)
