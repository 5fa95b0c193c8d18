"""Ownership of what the tools publish: a tool only ever replaces a path it wrote itself.

``tools/build_memory.py``, ``tools/dataset_converters/make_synthetic_panoptic.py`` and the
``*2coco_panoptic.py`` converters publish a folder by renaming a finished copy onto ``--out``
(or onto named outputs inside it). Without a check, ``--out work_dirs`` or ``--out data`` would
rename a user's checkpoints or datasets aside and delete them. Each published folder carries a
marker (the memory's ``manifest.json``, the dataset's ``synthetic_meta.json``, the converters'
:data:`OUTPUT_MARKER`): a path without it is never replaced, ``--force`` or not.
"""
import os
import os.path as osp
from typing import Iterable, Optional, Sequence

OUTPUT_MARKER = '.mmmaps_output'
_SHOWN = 5


class OutputOwnershipError(FileExistsError):
    """An output path holds something the tool did not write, or ``--force`` is missing."""


def describe_contents(path: str, limit: int = _SHOWN) -> str:
    """``'a.pth, logs/, ... (12 entries)'``: a few entries of the folder ``path``."""
    names = sorted(os.listdir(path))
    shown = [n + ('/' if osp.isdir(osp.join(path, n)) else '') for n in names[:limit]]
    more = ', ...' if len(names) > limit else ''
    return f'{", ".join(shown)}{more} ({len(names)} entries)'


def _refuse(path: str, what: str, reason: str) -> OutputOwnershipError:
    return OutputOwnershipError(
        f'refusing to replace {path}: {reason}; it is not a {what} written by this tool, so '
        'nothing was removed. Choose another --out, or move it away yourself')


def output_state(path: str, markers: Sequence[str], what: str,
                 allowed: Optional[Iterable[str]] = None) -> str:
    """Whether a tool may publish onto ``path``.

    Args:
        path (str): the folder the tool is about to publish.
        markers (Sequence[str]): file names, one of which the tool writes into every folder
            it publishes.
        what (str): what the tool publishes, for messages (e.g. ``'MAPS memory'``).
        allowed (Iterable[str], optional): every top-level name the tool writes; an owned
            folder holding anything else (files the user added) is refused too.

    Returns:
        str: ``'absent'``, ``'empty'`` (an empty folder, may be used) or ``'owned'`` (a
        folder this tool published: replaceable).

    Raises:
        OutputOwnershipError: ``path`` is a symbolic link, a file, or a non-empty folder
            without a marker or with foreign entries.
    """
    path = path.rstrip('/') or '/'
    if osp.islink(path):
        raise _refuse(path, what, f'it is a symbolic link to {os.readlink(path)}')
    if not osp.exists(path):
        return 'absent'
    if not osp.isdir(path):
        raise _refuse(path, what, 'it is a file, not a folder')
    names = os.listdir(path)
    if not names:
        return 'empty'
    if not any(osp.isfile(osp.join(path, m)) for m in markers):
        raise _refuse(path, what, f'it holds {describe_contents(path)} and no '
                      f'{" or ".join(markers)}')
    if allowed is not None:
        foreign = sorted(set(names) - set(allowed))
        if foreign:
            shown = ', '.join(foreign[:_SHOWN]) + (', ...' if len(foreign) > _SHOWN else '')
            raise _refuse(path, what, f'besides a {what} it holds {len(foreign)} other '
                          f'entries ({shown})')
    return 'owned'


def check_output_dir(path: str, markers: Sequence[str], what: str, force: bool,
                     allowed: Optional[Iterable[str]] = None,
                     force_hint: str = 'pass --force to replace it') -> str:
    """:func:`output_state`, and refuse to replace an owned folder unless ``force``."""
    state = output_state(path, markers, what, allowed)
    if state == 'owned' and not force:
        raise OutputOwnershipError(f'{path.rstrip("/")} already holds a {what}; {force_hint} '
                                   '(nothing was changed)')
    return state
