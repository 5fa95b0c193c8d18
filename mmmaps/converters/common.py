"""What every checkpoint converter of mmmaps shares: reading the source weights-only, checking
the result against the model a config builds, and writing it atomically.

A converter maps every source key explicitly (or refuses it by name); :func:`check_against`
then compares the converted state dict with the ``state_dict()`` of the target model (built
from its config; no weights are loaded or downloaded) and refuses, naming them, missing
and unexpected keys and differing shapes. mmengine's ``load_checkpoint`` with its default
``strict=False`` would only warn about them.
"""
import io
import os
import os.path as osp
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Tuple

import torch

from ..utils.checkpoint_loading import safe_torch_load
from ..utils.text import name_list

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONVERTER_META_KEY = 'converted_by'


class ConversionError(ValueError):
    """The source checkpoint cannot be converted exactly (the message names the keys)."""


def sha256_of(path: str) -> str:
    from ..memory.storage import sha256_file
    return sha256_file(path)


def load_source_state_dict(path: str) -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(state_dict, meta)`` of a ``.pth`` checkpoint, unpickled weights-only.

    Accepts mmcv/mmengine checkpoints (``{'state_dict': ..., 'meta': ...}``), ``{'model':
    ...}`` and plain state dicts of tensors."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path}: no such checkpoint file')
    checkpoint = safe_torch_load(path, map_location='cpu')
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f'{path}: expected a checkpoint dict, got '
                              f'{type(checkpoint).__name__}')
    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), Mapping) else {}
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    not_tensors = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f'{path}: expected a state dict of tensors (or one under '
                              f"'state_dict'/'model'); these entries are not tensors: "
                              f'{name_list(not_tensors)}')
    return dict(checkpoint), dict(meta)


def expected_state(config: str, cfg_options: Optional[dict] = None) -> Dict[str, torch.Size]:
    """Shapes of the ``state_dict()`` of the model ``config`` builds (randomly initialised
    by the modules' constructors; no ``init_cfg`` weights are loaded)."""
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    import mmmaps  # noqa: F401 (registers mmmaps' modules)
    if not osp.isfile(config):
        raise FileNotFoundError(f'{config}: no such config file')
    register_all_modules()
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    model = MODELS.build(cfg.model)
    return OrderedDict((k, v.shape) for k, v in model.state_dict().items())


def check_against(converted: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size],
                  source_of: Mapping[str, str], what: str) -> None:
    """Refuse, naming them, keys the model lacks, model keys nothing was converted to, and
    tensors whose shape differs from the model's."""
    unexpected = [f'{k} (from {source_of.get(k, "?")})' for k in converted if k not in expected]
    missing = [k for k in expected if k not in converted]
    shapes = [f'{k} (from {source_of.get(k, "?")}): {tuple(converted[k].shape)} vs the '
              f"model's {tuple(expected[k])}"
              for k in converted if k in expected and converted[k].shape != expected[k]]
    problems = []
    if unexpected:
        problems.append(f'{len(unexpected)} converted tensor(s) have no place in the model: '
                        f'{name_list(unexpected)}')
    if missing:
        problems.append(f'{len(missing)} model tensor(s) get no value from the checkpoint: '
                        f'{name_list(missing)}')
    if shapes:
        problems.append(f'{len(shapes)} shape(s) differ: {name_list(shapes)}')
    if problems:
        raise ConversionError(f'{what}: ' + '; '.join(problems))


def save_converted(state_dict: Mapping[str, torch.Tensor], out: str, meta: dict,
                   force: bool = False) -> None:
    """Write ``{'state_dict', 'meta'}`` to ``out`` through a temporary file.

    An existing ``out`` is replaced only with ``force`` and only if it is a checkpoint a
    mmmaps converter wrote (its ``meta`` says so); anything else is refused, even with
    ``force``."""
    from ..memory.storage import write_bytes
    if osp.isdir(out) or osp.islink(out):
        raise ConversionError(f'refusing to write {out}: it is a '
                              f'{"symbolic link" if osp.islink(out) else "folder"}')
    if osp.lexists(out):
        if not force:
            raise ConversionError(f'{out} exists; pass --force to replace a checkpoint '
                                  'converted earlier')
        if not _converted_by_mmmaps(out):
            raise ConversionError(f'refusing to replace {out}: it is not a checkpoint written '
                                  'by an mmmaps converter (even with --force)')
    buffer = io.BytesIO()
    torch.save(dict(state_dict=OrderedDict(state_dict), meta=meta), buffer)
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    write_bytes(out, buffer.getvalue())


def _converted_by_mmmaps(path: str) -> bool:
    try:
        checkpoint = safe_torch_load(path, map_location='cpu')
    except Exception:  # unreadable, not a checkpoint, or holds foreign types
        return False
    meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    return isinstance(meta, Mapping) and isinstance(meta.get(CONVERTER_META_KEY), str)
