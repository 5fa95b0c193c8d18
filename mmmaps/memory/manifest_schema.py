"""Schema checks of memory manifests, run before any file they list is opened or mapped.

Every error is a :class:`~.storage.MemoryBankError` naming the manifest and the field.
"""
import os.path as osp
import re

import numpy as np

from .storage import MANIFEST, MemoryBankError

_SHA256 = re.compile(r'^[0-9a-f]{64}$')
_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')
VALUE_DTYPES = ('float16', 'float32')
BANK_FILES = ('index.faiss', 'keys.npy', 'image_ids.npy', 'image_sha256.npy', 'offsets.npy',
              'values.bin')
CACHE_FILES = ('embeddings.npy', 'image_ids.npy', 'image_sha256.npy')
# a sanity bound on counts/dims: far above any real memory, far below what overflows
_MAX_COUNT = 1 << 40


def _fail(folder: str, field: str, problem: str) -> None:
    raise MemoryBankError(f'{osp.join(folder, MANIFEST)}: field {field!r} {problem}; rebuild the '
                          'memory with tools/build_memory.py')


def _int(folder, manifest, field, low=0):
    value = manifest.get(field) if isinstance(manifest, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(folder, field, f'must be an integer, got {value!r}')
    if not low <= value <= _MAX_COUNT:
        _fail(folder, field, f'must be in [{low}, {_MAX_COUNT}], got {value}')
    return value


def relative_member(folder: str, field: str, name) -> str:
    """``folder/name`` when ``name`` is a relative path inside ``folder`` (else an error)."""
    if not isinstance(name, str) or not name:
        _fail(folder, field, f'must be a non-empty relative path, got {name!r}')
    if osp.isabs(name) or '\\' in name or '\0' in name:
        _fail(folder, field, f'must be a relative path inside {folder}, got {name!r}')
    norm = osp.normpath(name)
    if norm == '.' or norm.split(osp.sep)[0] == '..':
        _fail(folder, field, f'must be a relative path inside {folder}, got {name!r}')
    real_folder = osp.realpath(folder)
    real = osp.realpath(osp.join(folder, norm))
    if osp.commonpath([real_folder, real]) != real_folder:
        _fail(folder, field, f'{name!r} leads outside {folder} (symbolic link?)')
    return osp.join(folder, norm)


def _files(folder: str, manifest: dict, required) -> dict:
    files = manifest.get('files')
    if not isinstance(files, dict):
        _fail(folder, 'files', f'must be a mapping of file name to bytes/sha256, got '
              f'{type(files).__name__}')
    for name, info in files.items():
        field = f'files.{name}'
        relative_member(folder, field, name)
        if not isinstance(info, dict):
            _fail(folder, field, f'must be a mapping with bytes and sha256, got {info!r}')
        size = info.get('bytes')
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= _MAX_COUNT:
            _fail(folder, field + '.bytes', f'must be an integer >= 0, got {size!r}')
        if not isinstance(info.get('sha256'), str) or not _SHA256.match(info['sha256']):
            _fail(folder, field + '.sha256', f'must be a 64-digit hex sha256, got '
                  f'{info.get("sha256")!r}')
    missing = [n for n in required if n not in files]
    if missing:
        _fail(folder, 'files', f'does not list {missing}')
    return files


def _npy_header(folder: str, name: str):
    """(shape, dtype, data offset) from the header of ``folder/name`` (never maps it)."""
    path = osp.join(folder, name)
    try:
        with open(path, 'rb') as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f'unsupported .npy version {version}')
            return shape, dtype, f.tell()
    except (OSError, ValueError, SyntaxError) as exc:
        raise MemoryBankError(f'{path} (listed in {osp.join(folder, MANIFEST)}) is not a '
                              f'readable .npy file: {exc}; rebuild the memory with '
                              'tools/build_memory.py') from exc


def _check_npy(folder: str, name: str, shape, dtype, field: str) -> None:
    """The header of ``name`` says ``shape``/``dtype`` and the file holds all of it."""
    path = osp.join(folder, name)
    if not osp.isfile(path):
        return  # check_files names a missing file
    got_shape, got_dtype, offset = _npy_header(folder, name)
    if tuple(got_shape) != tuple(shape) or (dtype is not None and got_dtype != np.dtype(dtype)):
        _fail(folder, field, f'says {tuple(shape)} {dtype or ""}, but {path} holds '
              f'{tuple(got_shape)} {got_dtype}')
    need = offset + int(np.prod(got_shape, dtype=np.int64)) * got_dtype.itemsize
    size = osp.getsize(path)
    if size != need:
        _fail(folder, field, f'needs {path} of {need} bytes ({tuple(shape)} {got_dtype}), the '
              f'file has {size} (truncated or modified)')


def validate_bank_manifest(folder: str, manifest: dict) -> None:
    """Types, ranges, file names and sizes of a memory-bank manifest (before mapping)."""
    num = _int(folder, manifest, 'num_entries')
    num_values = _int(folder, manifest, 'num_values')
    key_dim = _int(folder, manifest, 'key_dim', 1)
    value_dim = _int(folder, manifest, 'value_dim', 1)
    value_dtype = manifest.get('value_dtype')
    if value_dtype not in VALUE_DTYPES:
        _fail(folder, 'value_dtype', f'must be one of {VALUE_DTYPES}, got {value_dtype!r}')
    index = manifest.get('index')
    if not isinstance(index, dict) or not isinstance(index.get('type'), str):
        _fail(folder, 'index', f'must be a mapping with a type, got {index!r}')
    extras = manifest.get('extra_fields', {})
    if not isinstance(extras, dict):
        _fail(folder, 'extra_fields', f'must be a mapping of name to dtype, got {extras!r}')
    for name, dtype in extras.items():
        if not isinstance(name, str) or not _NAME.match(name):
            _fail(folder, 'extra_fields', f'has an invalid name {name!r}')
        try:
            np.dtype(dtype)
        except TypeError:
            _fail(folder, f'extra_fields.{name}', f'is not a numpy dtype: {dtype!r}')
    files = _files(folder, manifest, BANK_FILES + tuple(f'{n}.npy' for n in extras))
    value_bytes = num_values * value_dim * np.dtype(value_dtype).itemsize
    if files['values.bin']['bytes'] != value_bytes:
        _fail(folder, 'num_values', f'x value_dim x {value_dtype} = {num_values} x {value_dim} '
              f'x {np.dtype(value_dtype).itemsize} = {value_bytes} bytes, but files.values.bin '
              f'records {files["values.bin"]["bytes"]}')
    values_path = osp.join(folder, 'values.bin')
    size = osp.getsize(values_path) if osp.isfile(values_path) else None
    if size is not None and size != value_bytes:
        _fail(folder, 'num_values', f'needs {values_path} of {value_bytes} bytes, the file has '
              f'{size} (truncated or modified)')
    _check_npy(folder, 'keys.npy', (num, key_dim), 'float32', 'num_entries/key_dim')
    _check_npy(folder, 'image_ids.npy', (num,), 'int64', 'num_entries')
    _check_npy(folder, 'image_sha256.npy', (num,), 'S64', 'num_entries')
    _check_npy(folder, 'offsets.npy', (num + 1,), 'int64', 'num_entries')
    for name, dtype in extras.items():
        _check_npy(folder, f'{name}.npy', (num_values,), dtype, f'extra_fields.{name}')


def validate_cache_manifest(folder: str, manifest: dict) -> None:
    """Types, ranges, file names and sizes of a query-cache manifest (before loading)."""
    num = _int(folder, manifest, 'num_entries')
    dim = _int(folder, manifest, 'dim', 1)
    _files(folder, manifest, CACHE_FILES)
    _check_npy(folder, 'embeddings.npy', (num, dim), 'float32', 'num_entries/dim')
    _check_npy(folder, 'image_ids.npy', (num,), 'int64', 'num_entries')
    _check_npy(folder, 'image_sha256.npy', (num,), 'S64', 'num_entries')


def validate_root_manifest(folder: str, manifest: dict) -> None:
    """Types and member paths of a memory directory's root manifest."""
    banks = manifest.get('banks')
    if not isinstance(banks, dict):
        _fail(folder, 'banks', f'must be a mapping (scene/object -> folder), got {banks!r}')
    for kind, name in banks.items():
        if name is not None:
            relative_member(folder, f'banks.{kind}', name)
    if manifest.get('query_cache') is not None:
        relative_member(folder, 'query_cache', manifest['query_cache'])
    encoders = manifest.get('encoders')
    if not isinstance(encoders, dict) or not isinstance(encoders.get('key'), dict):
        _fail(folder, 'encoders', f'must be a mapping with a key encoder, got {encoders!r}')
    if not isinstance(manifest.get('source'), dict):
        _fail(folder, 'source', f'must be a mapping, got {manifest.get("source")!r}')
