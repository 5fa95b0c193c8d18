"""One check that a checkpoint's tensors fit the model they are loaded into.

mmengine loads checkpoints with ``strict=False``: a checkpoint of another config then runs
with some layers left random, and only a "missing keys" log line says so. Every mmmaps load
of a whole model (``tools/train.py`` ``load_from``/``--resume``, ``tools/test.py``, the demo's
:func:`~mmmaps.apis.init_panoptic_model`, the ONNX export) goes through
:func:`checkpoint_fit_check`, which refuses, naming the tensors, any

- checkpoint tensor the model has no place for (unexpected),
- model tensor the checkpoint lacks (missing; BatchNorm's ``num_batches_tracked`` counters
  excepted: torch itself fills them for older checkpoints),
- tensor of another shape.

A model may allow documented differences by defining
``allow_checkpoint_difference(diff, state_dict, prefix) -> (StateDiff, hint)``: it returns
what stays refused (it may drop tensors from ``state_dict`` that it re-initialises, and log
what it allowed) and a hint appended to the error. MAPS allows exactly its memory layers to be
missing and a classifier of another class count (``MAPS.allow_checkpoint_difference``).

The check is a ``load_state_dict`` pre-hook on the top model only, so loads into a submodule
(mmdet's ``init_cfg=dict(type='Pretrained')`` backbones) are not affected.
"""
from contextlib import contextmanager
from typing import Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple

import torch

from .text import name_list

__all__ = ['CheckpointMismatchError', 'ResumeStateError', 'StateDiff', 'state_diff',
           'describe_diff', 'check_state_fits', 'install_fit_check', 'checkpoint_fit_check']

#: Buffers a checkpoint may lack (torch's BatchNorm fills them when loading old checkpoints).
OPTIONAL_SUFFIXES = ('num_batches_tracked',)
_HANDLE = '_mmmaps_fit_check_handle'


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model (the tensors are named in the message)."""


class ResumeStateError(CheckpointMismatchError):
    """A checkpoint's training state (meta, optimizer, schedulers) does not fit the run that
    resumes from it."""


class StateDiff(NamedTuple):
    """What differs between a model's state dict and a checkpoint's.

    ``missing``: model tensors the checkpoint lacks; ``unexpected``: checkpoint tensors the
    model has no place for; ``mismatched``: ``{name: (checkpoint shape, model shape)}``.
    """
    missing: List[str]
    unexpected: List[str]
    mismatched: Dict[str, Tuple[tuple, tuple]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)


def state_diff(own: Mapping[str, tuple], incoming: Mapping[str, tuple]) -> StateDiff:
    """Compare tensor shapes by name (``own``: the model's, ``incoming``: the checkpoint's)."""
    return StateDiff(
        missing=[k for k in own if k not in incoming and not k.endswith(OPTIONAL_SUFFIXES)],
        unexpected=[k for k in incoming if k not in own],
        mismatched={k: (tuple(incoming[k]), tuple(own[k])) for k in incoming
                    if k in own and tuple(incoming[k]) != tuple(own[k])})


def describe_diff(diff: StateDiff, model_name: str) -> str:
    """One line naming every refused tensor (the first 12 of each kind, and the counts)."""
    problems = []
    if diff.unexpected:
        problems.append(f'{len(diff.unexpected)} tensor(s) of the checkpoint have no place in '
                        f'{model_name}: {name_list(diff.unexpected)}')
    if diff.mismatched:
        problems.append(f'{len(diff.mismatched)} tensor(s) have another shape: ' + name_list(
            f'{k}: checkpoint {a}, model {b}' for k, (a, b) in diff.mismatched.items()))
    if diff.missing:
        problems.append(f'{len(diff.missing)} {model_name} tensor(s) are not in the checkpoint: '
                        + name_list(diff.missing))
    return '; '.join(problems)


def _shapes(state: Mapping) -> Dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items() if torch.is_tensor(v)}


def check_state_fits(model: torch.nn.Module, state_dict: dict, prefix: str = '') -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state_dict`` (keys under ``prefix``)
    fits ``model``, after the model's own ``allow_checkpoint_difference``."""
    own = _shapes(model.state_dict())
    incoming = _shapes({k[len(prefix):]: v for k, v in state_dict.items()
                        if k.startswith(prefix)})
    diff, hint = state_diff(own, incoming), ''
    allow = getattr(model, 'allow_checkpoint_difference', None)
    if diff and allow is not None:
        diff, hint = allow(diff, state_dict, prefix)
    if diff:
        raise CheckpointMismatchError(
            f'the checkpoint does not fit the {type(model).__name__} of this config: '
            + describe_diff(diff, type(model).__name__) + (f'. {hint}' if hint else ''))


def _hook(module, state_dict, prefix, *args) -> None:
    check_state_fits(module, state_dict, prefix)


def install_fit_check(model: torch.nn.Module) -> Optional[object]:
    """Make every ``load_state_dict`` of ``model`` itself run :func:`check_state_fits`.

    Returns the hook handle, or None when the model already has the check (e.g. MAPS,
    which installs it when built).
    """
    if getattr(model, _HANDLE, None) is not None:
        return None
    handle = model._register_load_state_dict_pre_hook(_hook, with_module=True)
    setattr(model, _HANDLE, handle)
    return handle


@contextmanager
def checkpoint_fit_check(model: torch.nn.Module, origin: str) -> Iterator[None]:
    """Within the block, loading a checkpoint into ``model`` (unwrapped from DDP) is checked;
    a mismatch is re-raised naming ``origin`` (the checkpoint file)."""
    from mmengine.model import is_model_wrapper
    model = model.module if is_model_wrapper(model) else model
    handle = install_fit_check(model)
    try:
        yield
    except CheckpointMismatchError as err:
        message = str(err)
        raise CheckpointMismatchError(
            message if message.startswith(f'{origin}: ') else f'{origin}: {message}') from None
    finally:
        if handle is not None:
            handle.remove()
            setattr(model, _HANDLE, None)
