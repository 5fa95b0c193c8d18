"""Every checkpoint is unpickled with torch's weights-only loader, on every torch line.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``. Under torch < 2.6 that is a
full unpickle, so a crafted ``.pth`` given to ``tools/test.py``, ``--resume`` or the demo runs
code; under torch >= 2.6 the default flips to weights-only and mmengine refuses its own
checkpoints (they hold a ``HistoryBuffer`` and numpy arrays), so resuming fails.

Importing mmmaps calls :func:`register_safe_checkpoint_loaders`, which replaces mmengine's
loader of every checkpoint scheme (local files, http(s), ``torchvision://``/``modelzoo://``,
``open-mmlab://``, ``mmcls://``, s3/petrel, pavi) by one that downloads or reads the bytes the
same way and unpickles them with :func:`safe_torch_load`: ``weights_only=True`` plus exactly the
types mmengine and mmdet write (:func:`checkpoint_types`). A checkpoint that holds anything
else raises :class:`UntrustedCheckpointError` naming the type; a user who trusts the file lists
the type in the environment variable ``MMMAPS_TRUSTED_CHECKPOINT_TYPES``.
"""
import collections
import importlib
import io
import os
import os.path as osp
import pickle
import re
import struct
import zipfile
from tempfile import TemporaryDirectory
from typing import Any, Callable, List, Optional, Union
from urllib.parse import urlparse

import numpy as np
import torch

__all__ = ['TRUST_ENV', 'UntrustedCheckpointError', 'UnreadableCheckpointError',
           'checkpoint_types', 'safe_torch_load', 'register_safe_checkpoint_loaders',
           'numpy_multiarray']

TRUST_ENV = 'MMMAPS_TRUSTED_CHECKPOINT_TYPES'


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds a type outside :func:`checkpoint_types` (nothing of it was run)."""


class UnreadableCheckpointError(ValueError):
    """A checkpoint file cannot be read: truncated, or not a PyTorch checkpoint."""


def numpy_multiarray():
    """numpy's multiarray module: numpy 2 moved numpy.core to numpy._core (numpy 1.26 has a
    stub ``numpy._core`` and numpy 2 a deprecated ``numpy.core`` alias)."""
    new = int(np.__version__.split('.')[0]) >= 2
    return importlib.import_module('numpy._core.multiarray' if new else 'numpy.core.multiarray')


def checkpoint_types() -> List[Any]:
    """The non-tensor types found in mmengine/mmdet checkpoints.

    ``meta.message_hub`` holds :class:`mmengine.logging.HistoryBuffer` objects whose state is
    numpy arrays (ndarray, dtype and their reconstructors), numpy scalars and the class's
    statistics functions, which pickle as ``getattr(HistoryBuffer, 'mean')``; ``MultiStepLR``
    keeps its milestones in a :class:`collections.Counter`. Everything else mmengine writes
    (dicts, lists, tuples, strings, numbers, tensors, OrderedDict) is allowed by torch itself.

    ``getattr`` only looks attributes up: torch's weights-only unpickler calls nothing but the
    allowed functions and classes, so what a ``getattr`` returns is never called while
    unpickling.
    """
    from mmengine.logging import HistoryBuffer
    multiarray = numpy_multiarray()
    types = [HistoryBuffer, getattr, collections.Counter, np.ndarray, np.dtype,
             multiarray._reconstruct, multiarray.scalar]
    types += [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith('DType')]
    return types + _trusted_by_user()


def _aliases() -> List[tuple]:
    """numpy 1 and numpy 2 name the same reconstructors differently; a checkpoint written on
    one torch line of the matrix must load on the other (needs torch >= 2.6 for aliases)."""
    multiarray = numpy_multiarray()
    other = ('numpy.core.multiarray' if multiarray.__name__.startswith('numpy._core') else
             'numpy._core.multiarray')
    return [(multiarray._reconstruct, f'{other}._reconstruct'),
            (multiarray.scalar, f'{other}.scalar')]


def _trusted_by_user() -> List[Any]:
    names = [n.strip() for n in os.environ.get(TRUST_ENV, '').split(',') if n.strip()]
    found = []
    for name in names:
        module, _, attr = name.rpartition('.')
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError, ValueError) as err:
            raise ValueError(f'{TRUST_ENV}: cannot import {name!r} ({err}); give full dotted '
                             'names, e.g. package.module.ClassName') from err
    return found


def _allowed_globals() -> List[Union[Callable, tuple]]:
    allowed = checkpoint_types()
    major, minor = (int(v) for v in torch.__version__.split('+')[0].split('.')[:2])
    if (major, minor) >= (2, 6):
        allowed += _aliases()
    return allowed


def safe_torch_load(source: Union[str, io.IOBase], map_location: Any = None,
                    origin: Optional[str] = None) -> Any:
    """``torch.load`` with ``weights_only=True`` and the checkpoint types allowed.

    Args:
        source: a file path or a binary file object.
        map_location: as for :func:`torch.load`.
        origin: what to call the checkpoint in errors (default: ``source``).

    Raises:
        UntrustedCheckpointError: the file holds a type that is not allowed (named in the
            message). No code of the file has run.
        UnreadableCheckpointError: the file is truncated or not a PyTorch checkpoint.
    """
    origin = origin or str(source)
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if _unreadable(err):
            raise _unreadable_error(origin, err) from None
        found = re.search(r'GLOBAL ([\w.]+)', str(err))
        what = found.group(1) if found else 'an object that is not a tensor or plain data'
        raise UntrustedCheckpointError(
            f'{origin}: the checkpoint holds {what}, which mmmaps does not unpickle (it loads '
            'checkpoints with torch.load(weights_only=True) and allows only the types mmengine '
            f'and mmdet save). Nothing from the file was run. If you trust the file, allow the '
            f'type explicitly: {TRUST_ENV}={what if found else "package.module.Type"} '
            f'(comma-separated for several).\ntorch said: {str(err).splitlines()[0]}') from None
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, TypeError,
            AttributeError, struct.error, zipfile.BadZipFile) as err:
        # what torch.load raises on bytes that are no (complete) checkpoint: 'PytorchStreamReader
        # failed reading zip archive' (truncated), a bare EOFError (empty file), KeyError or
        # IndexError from the unpickler (other files, read as a legacy checkpoint)
        if isinstance(err, RuntimeError) and 'CUDA' in str(err):
            raise  # a readable checkpoint saved on GPU, with no GPU here: torch's message
        raise _unreadable_error(origin, err) from None


def _unreadable(err: pickle.UnpicklingError) -> bool:
    """Whether torch's weights-only unpickler failed on bytes that are no pickle at all
    (a truncated or foreign file) rather than on a type it refuses."""
    text = str(err)
    return 'GLOBAL' not in text and any(
        sign in text for sign in ('invalid load key', 'truncated', 'EOF', 'Ran out of input',
                                  'could not find MARK', 'unpickling stack underflow',
                                  'Unsupported operand'))


def _unreadable_error(origin: str, err: BaseException) -> UnreadableCheckpointError:
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return UnreadableCheckpointError(
        f'{origin}: cannot read the checkpoint: the file is truncated or not a PyTorch '
        f'checkpoint (torch.load said: {type(err).__name__}: {lines[0][:200]}). Copy or '
        'download it again, or point at another file.')


# --------------------------------------------------------------------- mmengine's schemes
def load_from_local(filename: str, map_location: Any = None) -> Any:
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_torch_load(filename, map_location)


def _download(url: str) -> str:
    """The file of ``url`` in torch's hub cache (downloaded once, through a temporary name)."""
    model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    path = osp.join(model_dir, osp.basename(urlparse(url).path))
    if not osp.isfile(path):
        torch.hub.download_url_to_file(url, path, progress=os.isatty(0))
    return path


def load_from_http(url: str, map_location: Any = None) -> Any:
    from mmengine.dist import barrier, get_dist_info
    rank, world_size = get_dist_info()
    if rank == 0:
        path = _download(url)
    if world_size > 1:  # the other ranks wait for rank 0's download
        barrier()
        if rank > 0:
            path = _download(url)
    return safe_torch_load(path, map_location, origin=url)


def load_from_torchvision(filename: str, map_location: Any = None) -> Any:
    from mmengine.runner.checkpoint import get_torchvision_models
    name = filename.split('://', 1)[1]
    return load_from_http(get_torchvision_models()[name], map_location)


def load_from_openmmlab(filename: str, map_location: Any = None) -> Any:
    from mmengine.runner.checkpoint import (_get_mmengine_home, get_deprecated_model_names,
                                            get_external_models)
    name = filename.split('://', 1)[1]
    name = get_deprecated_model_names().get(name, name)
    url = get_external_models()[name]
    if url.startswith(('http://', 'https://')):
        return load_from_http(url, map_location)
    return load_from_local(osp.join(_get_mmengine_home(), url), map_location)


def load_from_mmcls(filename: str, map_location: Any = None) -> Any:
    from mmengine.runner.checkpoint import _process_mmcls_checkpoint, get_mmcls_models
    checkpoint = load_from_http(get_mmcls_models()[filename[len('mmcls://'):]], map_location)
    return _process_mmcls_checkpoint(checkpoint)


def load_from_ceph(filename: str, map_location: Any = None) -> Any:
    from mmengine.fileio import get_file_backend
    backend = get_file_backend(filename, backend_args=dict(backend='petrel'))
    with io.BytesIO(backend.get(filename)) as buffer:
        return safe_torch_load(buffer, map_location, origin=filename)


def load_from_pavi(filename: str, map_location: Any = None) -> Any:
    try:
        from pavi import modelcloud
    except ImportError as err:
        raise ImportError('Please install pavi to load checkpoint from modelcloud.') from err
    model = modelcloud.get(filename[len('pavi://'):])
    with TemporaryDirectory() as tmp_dir:
        path = osp.join(tmp_dir, model.name)
        model.download(path)
        return safe_torch_load(path, map_location, origin=filename)


_SCHEMES = {
    '': load_from_local,
    ('http://', 'https://'): load_from_http,
    ('modelzoo://', 'torchvision://'): load_from_torchvision,
    ('open-mmlab://', 'openmmlab://'): load_from_openmmlab,
    'mmcls://': load_from_mmcls,
    (r'(\S+\:)?s3://', r'(\S+\:)?petrel://'): load_from_ceph,
    'pavi://': load_from_pavi,
}


def register_safe_checkpoint_loaders() -> None:
    """Make every mmengine checkpoint scheme load through :func:`safe_torch_load`."""
    from mmengine.runner import CheckpointLoader
    for prefixes, loader in _SCHEMES.items():
        CheckpointLoader.register_scheme(prefixes, loader, force=True)
