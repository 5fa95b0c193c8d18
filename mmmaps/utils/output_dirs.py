"""Ownership of what the tools publish: ``--force`` replaces only files a tool wrote itself.

Every folder an mmmaps tool publishes (a MAPS memory, a synthetic dataset, a converter's PNG
folder, an ONNX export, ``tools/test.py --panoptic-out`` predictions) carries a *record*,
:data:`OUTPUT_RECORD`, written last: which tool output it is (``what``) and every file and
folder inside it, at any depth. Named outputs written beside such a folder (a converter's
JSONs, ``PREFIX.panoptic.json``) are listed in the record as ``siblings``.

A path is replaceable only when the record says it is this kind of output and the path
holds nothing else: a file, folder or link the user added anywhere inside makes the tool
refuse, naming the first such entries, ``--force`` or not. (A recorded file that was
changed is still the tool's: a damaged output must stay replaceable.) A folder without a record (someone else's, or an output of an
mmmaps older than the record) cannot be told apart from the user's files and is refused too.

Publishing (:func:`publish_dir`) renames a finished temporary folder onto the target, so the
target is at every moment the old complete output, absent, or the new complete one. The
published folder gets the user's umask (``tempfile.mkdtemp`` creates it 0700).
"""
import json
import os
import os.path as osp
import shutil
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

OUTPUT_RECORD = '.mmmaps_output'
OUTPUT_MARKER = OUTPUT_RECORD  # the name converters' PNG folders have always carried
RECORD_FORMAT = 'mmmaps-output-record'
RECORD_VERSION = 2
_SHOWN = 5


class OutputOwnershipError(FileExistsError):
    """An output path holds something the tool did not write, or ``--force`` is missing."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: str, directory: bool = False) -> None:
    """Give ``path`` the mode the user's umask gives new files (mkstemp/mkdtemp: private)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def describe_contents(path: str, limit: int = _SHOWN) -> str:
    """``'a.pth, logs/, ... (12 entries)'``: a few entries of the folder ``path``."""
    names = sorted(os.listdir(path))
    shown = [n + ('/' if osp.isdir(osp.join(path, n)) else '') for n in names[:limit]]
    more = ', ...' if len(names) > limit else ''
    return f'{", ".join(shown)}{more} ({len(names)} entries)'


def _few(items: Sequence[str], limit: int = _SHOWN) -> str:
    return ', '.join(items[:limit]) + (f', ... ({len(items)} in all)' if len(items) > limit
                                       else '')


def _walk(folder: str) -> Tuple[List[str], List[str], List[str]]:
    """Files (links count as files), folders and other entries under ``folder``, relative,
    at any depth, without following links; the record itself left out."""
    files, dirs, other = [], [], []
    for parent, subdirs, names in os.walk(folder):
        rel = osp.relpath(parent, folder)
        prefix = '' if rel == '.' else rel + '/'
        for name in list(subdirs):
            path = osp.join(parent, name)
            if osp.islink(path):  # os.walk lists links to folders as folders
                subdirs.remove(name)
                files.append(prefix + name)
            else:
                dirs.append(prefix + name)
        for name in names:
            if not prefix and name == OUTPUT_RECORD:
                continue
            path = osp.join(parent, name)
            if osp.isfile(path) or osp.islink(path):
                files.append(prefix + name)
            else:
                other.append(prefix + name)  # sockets, fifos: never written by a tool
    return files, dirs, other


def write_record(folder: str, what: str, siblings: Iterable[str] = ()) -> None:
    """Record every file and folder in ``folder`` as this tool's ``what`` (call it when the
    folder is complete); ``siblings``: names beside ``folder`` it also wrote."""
    files, dirs, other = _walk(folder)
    if other:
        raise OSError(f'{folder}: not a regular file or folder: {_few(other)}')
    record = dict(format=RECORD_FORMAT, version=RECORD_VERSION, what=what, files=sorted(files),
                  dirs=sorted(dirs), siblings=sorted(siblings))
    fd, tmp = tempfile.mkstemp(prefix=OUTPUT_RECORD + '.', dir=folder)
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(record, f)
        publish_mode(tmp)
        os.replace(tmp, osp.join(folder, OUTPUT_RECORD))
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def read_record(folder: str, what: str) -> Optional[dict]:
    """The record of ``folder`` if it is a ``what`` an mmmaps tool published, else None."""
    path = osp.join(folder, OUTPUT_RECORD)
    if osp.islink(path) or not osp.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not (isinstance(record, dict) and record.get('format') == RECORD_FORMAT
            and record.get('version') == RECORD_VERSION and record.get('what') == what
            and all(isinstance(record.get(k), list) for k in ('files', 'dirs', 'siblings'))):
        return None
    return record


def foreign_entries(folder: str, record: dict) -> List[str]:
    """Entries of ``folder`` (relative, sorted) that its record does not list: files,
    folders and links added after the tool wrote it."""
    files, dirs, other = _walk(folder)
    recorded, recorded_dirs = set(record['files']), set(record['dirs'])
    return sorted([f'{name}/' for name in dirs if name not in recorded_dirs]
                  + [name for name in files if name not in recorded] + other)


def _refuse(path: str, what: str, reason: str) -> OutputOwnershipError:
    return OutputOwnershipError(
        f'refusing to replace {path}: {reason}; it is not a {what} written by this tool, so '
        'nothing was removed. Choose another --out, or move it away yourself')


def output_state(path: str, what: str, legacy_markers: Sequence[str] = ()) -> str:
    """Whether a tool may publish its ``what`` onto the folder ``path``.

    Args:
        path (str): the folder the tool is about to publish.
        what (str): what the tool publishes (e.g. ``'MAPS memory'``): the record must say so.
        legacy_markers (Sequence[str]): files an output of an mmmaps older than the record
            holds (only to explain the refusal).

    Returns:
        str: ``'absent'``, ``'empty'`` (an empty folder, may be used) or ``'owned'`` (a
        ``what`` this tool published, holding nothing else: replaceable).

    Raises:
        OutputOwnershipError: ``path`` is a symbolic link, a file, a non-empty folder without
            the record of a ``what``, or one holding entries the record does not list.
    """
    path = path.rstrip('/') or '/'
    if osp.islink(path):
        raise _refuse(path, what, f'it is a symbolic link to {os.readlink(path)}')
    if not osp.exists(path):
        return 'absent'
    if not osp.isdir(path):
        raise _refuse(path, what, 'it is a file, not a folder')
    if not os.listdir(path):
        return 'empty'
    record = read_record(path, what)
    if record is None:
        if any(osp.isfile(osp.join(path, m)) for m in legacy_markers):
            raise _refuse(path, what, f'it holds {describe_contents(path)} and no '
                          f'{OUTPUT_RECORD} (the list of files a tool wrote: an output of an '
                          'older mmmaps, whose files cannot be told apart from yours)')
        raise _refuse(path, what, f'it holds {describe_contents(path)} and no {OUTPUT_RECORD} '
                      f'of a {what}')
    foreign = foreign_entries(path, record)
    if foreign:
        raise _refuse(path, what, f'besides the {what} it holds {len(foreign)} entries this '
                      f'tool did not write: {_few(foreign)}')
    return 'owned'


def check_output_dir(path: str, what: str, force: bool, legacy_markers: Sequence[str] = (),
                     force_hint: str = 'pass --force to replace it') -> str:
    """:func:`output_state`, and refuse to replace an owned folder unless ``force``."""
    state = output_state(path, what, legacy_markers)
    if state == 'owned' and not force:
        raise OutputOwnershipError(f'{path.rstrip("/")} already holds a {what}; {force_hint} '
                                   '(nothing was changed)')
    return state


def publish_dir(tmp: str, dst: str, what: str, siblings: Iterable[str] = (),
                legacy_markers: Sequence[str] = ()) -> None:
    """Record the finished folder ``tmp`` (beside ``dst``) and rename it to ``dst``.

    An existing ``dst`` is checked again (it may have changed while ``tmp`` was written),
    renamed aside and deleted only once the new one is in place.
    """
    dst = dst.rstrip('/')
    write_record(tmp, what, siblings)
    publish_mode(tmp, directory=True)
    old = None
    if output_state(dst, what, legacy_markers) != 'absent':
        old = tempfile.mkdtemp(prefix='.' + osp.basename(dst) + '.old-',
                               dir=osp.dirname(osp.abspath(dst)))
        os.rename(dst, osp.join(old, 'replaced'))
    os.rename(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------- named outputs inside a shared folder
def _owned_targets(out_dir: str, anchors: Sequence[str], what: str) -> Dict[str, str]:
    """Targets in ``out_dir`` that the record of a published folder among ``anchors``
    vouches for, each with the reason it may *not* be replaced ('' when it may)."""
    owned = {}
    for anchor in anchors:
        folder = osp.join(out_dir, anchor)
        if osp.islink(folder) or not osp.isdir(folder):
            continue
        record = read_record(folder, what)
        if record is None:
            continue
        foreign = foreign_entries(folder, record)
        owned[anchor] = (f'it holds {len(foreign)} entries the converter did not write: '
                         f'{_few(foreign)}' if foreign else '')
        for name in record['siblings']:
            path = osp.join(out_dir, name)
            if osp.isfile(path) and not osp.islink(path):
                owned[name] = ''
    return owned


def check_targets(out_dir: str, groups: Sequence[Sequence[str]], what: str,
                  force: bool) -> List[str]:
    """May the named outputs of ``groups`` be written into the shared folder ``out_dir``?

    Each group is a published folder (its first name, holding the record) and the files
    written beside it. Existing targets need ``force``, and are replaced only when a
    group's record vouches for them and nothing was added to them.

    Returns:
        list[str]: the existing targets (to be replaced).

    Raises:
        OutputOwnershipError: a target exists without ``force``, or is not the tool's own.
    """
    targets = [name for group in groups for name in group]
    existing = [t for t in targets if osp.lexists(osp.join(out_dir, t))]
    if existing and not force:
        raise OutputOwnershipError(
            f'{", ".join(osp.join(out_dir, t) for t in existing)} already exist(s); pass '
            '--force (force=True) to replace')
    owned = _owned_targets(out_dir, [group[0] for group in groups], what)
    refused = []
    for name in existing:
        path = osp.join(out_dir, name)
        if osp.islink(path):
            refused.append(f'{path} (a symbolic link)')
        elif name not in owned:
            kind = (f'a folder holding {describe_contents(path)}' if osp.isdir(path) else
                    'a file')
            refused.append(f'{path} ({kind}, not listed in a {OUTPUT_RECORD} of a {what})')
        elif owned[name]:
            refused.append(f'{path} ({owned[name]})')
    if refused:
        raise OutputOwnershipError(
            f'refusing to replace {"; ".join(refused)}: not (only) written by this tool, so '
            'nothing was removed. Choose another --out, or move it away yourself')
    return existing


def remove_targets(out_dir: str, names: Iterable[str]) -> None:
    """Delete outputs :func:`check_targets` allowed to replace (folders and files)."""
    for name in names:
        path = osp.join(out_dir, name)
        if osp.isdir(path) and not osp.islink(path):
            shutil.rmtree(path)
        elif osp.lexists(path):
            os.remove(path)
