"""The schema of a config's ``memory`` section: every key is known, or it is an error.

:func:`check_memory_cfg` runs wherever the section is read (:func:`~mmmaps.memory.build_plan.
memory_cfg_of` for ``tools/build_memory.py`` and the audit, :func:`~mmmaps.memory.
build_external_memory` for train, test, demo and the retrieval viewer, the ONNX export), so a
misspelt key (``memory.retreival.k=3``) is refused naming its full path and the known keys,
instead of leaving a default silently in place. The encoder sub-configs (``key_encoder``,
``dense_encoder``) are registry configs: their keys are the encoder class's arguments
(:func:`~mmmaps.memory.encoders.base.check_encoder_cfg`).
"""
from typing import Dict, Mapping, Optional

from .storage import MemoryBankError

__all__ = ['MemoryConfigError', 'MEMORY_KEYS', 'BUILD_KEYS', 'RETRIEVAL_KEYS', 'INDEX_KEYS',
           'check_memory_cfg', 'unknown_keys_message']

# memory: what each key means
MEMORY_KEYS = dict(
    root='memory directory that tools/build_memory.py writes',
    key_encoder='frozen encoder of the query and memory keys (a memory encoder config)',
    dense_encoder='frozen dense encoder of the object values, or None (scene memory only)',
    index='FAISS index: type HNSW, Flat or IVFPQ and its settings',
    value_dtype='dtype of the stored values (float16 or float32)',
    build='build options of tools/build_memory.py',
    retrieval='how a query reads the memory',
    dataset_config='a config whose training split the memory indexes, when it is another '
    "dataset's (the paper's COCO memory of the ADE20K and Cityscapes models); default: this "
    "config's own")

# memory.build: what each key means
BUILD_KEYS = dict(
    batch_size='images per encoder batch',
    chunk_size='images per resumable chunk (<out>.build/chunks/)',
    num_workers='image decoding workers')

# memory.retrieval: what each key means
RETRIEVAL_KEYS = dict(
    k='images retrieved per query (paper: 5)',
    max_objects='cap on object slots, objects of better-ranked images first (default 16 k)',
    random_sampling="k' > k: in training, k images sampled from the top-k' (MAPS-Aug)",
    pad_objects_to_max='always pad the object slots to max_objects (fixed shapes)',
    allow_eval_overlap='evaluate on images that are in the memory (a leak; off by default)',
    query_keys="where query keys come from: 'model_input' (default, the paper: the key "
    "encoder on the image the model sees) or 'full_image_cache' (the whole file's cached key, "
    'in training too)',
    wrong_memory_prob="in training, probability that an image is given another training "
    "image's retrieval (robustness to a wrong memory; 0 by default)",
    wrong_memory_at_test='apply wrong_memory_prob at evaluation too (the shuffled-memory '
    'control)')

# memory.index: the settings of each index type (mmmaps.memory.faiss_index builds them)
INDEX_KEYS = dict(
    HNSW=dict(M='graph degree', ef_construction='build-time beam width',
              ef_search='search-time beam width'),
    Flat=dict(),
    IVFPQ=dict(nlist='inverted lists', m='PQ sub-quantizers', nbits='bits per sub-code',
               nprobe='lists searched per query'))


class MemoryConfigError(MemoryBankError, KeyError):
    """A config's ``memory`` section has a key no part of mmmaps reads, or a sub-section of
    the wrong kind. A :class:`MemoryBankError` (the memory tools report it as one line) and a
    ``KeyError`` (as the unknown-key errors of the config always were)."""

    def __str__(self) -> str:
        # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ''


def unknown_keys_message(path: str, unknown, known: Mapping[str, str],
                         owner: Optional[str] = None) -> str:
    """``'<path>.<key>'`` of every unknown key and the known keys with their meaning."""
    unknown = sorted(map(str, unknown))
    names = ', '.join(f'{path}.{key}' for key in unknown)
    listed = '; '.join(f'{key} ({meaning})' if meaning else key
                       for key, meaning in known.items()) or 'none'
    return (f'{names} {"is not a setting" if len(unknown) == 1 else "are not settings"} of '
            f'{owner or path} (unknown keys {unknown}); known: {listed}')


def _check_keys(section: Mapping, path: str, known: Mapping[str, str]) -> None:
    unknown = [key for key in section if key not in known]
    if unknown:
        raise MemoryConfigError(unknown_keys_message(path, unknown, known))


def _sub_section(memory: Mapping, name: str) -> Optional[Mapping]:
    value = memory.get(name)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise MemoryConfigError(f'memory.{name} must be a dict ({MEMORY_KEYS[name]}) or None, '
                                f'got {type(value).__name__} {value!r}')
    return value


def _check_index(index: Mapping) -> None:
    kind = index.get('type')
    if kind not in INDEX_KEYS:
        raise MemoryConfigError(f'memory.index.type must be one of {sorted(INDEX_KEYS)}, got '
                                f'{kind!r}')
    known: Dict[str, str] = dict(type='HNSW, Flat or IVFPQ', **INDEX_KEYS[kind])
    unknown = [key for key in index if key not in known]
    if unknown:
        message = unknown_keys_message('memory.index', unknown, known) + f' (type {kind})'
        elsewhere = [f'memory.index.{key} is a setting of type {other}' for key in unknown
                     for other, keys in INDEX_KEYS.items() if key in keys]
        if elsewhere:
            message += ('; ' + '; '.join(elsewhere) + ' (a config that replaces its base '
                        'config\'s index by another type needs _delete_=True in memory.index)')
        raise MemoryConfigError(message)


def check_memory_cfg(memory: Mapping, encoders: bool = True) -> Mapping:
    """Refuse a ``memory`` section with a key no part of mmmaps reads, anywhere in it.

    Args:
        memory: The config's ``memory`` section (a dict or ConfigDict).
        encoders: Also check the keys of ``key_encoder`` / ``dense_encoder`` against the
            arguments of the encoder class they name.

    Returns:
        ``memory`` itself.

    Raises:
        MemoryConfigError: naming the full key (e.g. ``memory.retreival``) and the known
            keys.
    """
    if not isinstance(memory, Mapping):
        raise MemoryConfigError(f'the config\'s memory section must be a dict, got '
                                f'{type(memory).__name__}')
    _check_keys(memory, 'memory', MEMORY_KEYS)
    for name, known in (('build', BUILD_KEYS), ('retrieval', RETRIEVAL_KEYS)):
        section = _sub_section(memory, name)
        if section is not None:
            _check_keys(section, f'memory.{name}', known)
    index = _sub_section(memory, 'index')
    if index is not None:
        _check_index(index)
    if encoders:
        from .encoders.base import check_encoder_cfg
        for name in ('key_encoder', 'dense_encoder'):
            section = _sub_section(memory, name)
            if section is not None:
                check_encoder_cfg(section, f'memory.{name}')
    return memory
