"""What killed memory builds leave behind, and its removal (under the build lock)."""
import json
import os
import os.path as osp
import shutil
import socket
from typing import List

from mmengine.logging import print_log

from .build_chunks import chunk_dir, temporary_chunk_owner
from .build_lock import process_alive
from .build_plan import PLAN_FILE
from .memory_root import read_root_manifest


def clean_leftovers(out: str, build_dir: str, published_intact: bool = False) -> List[str]:
    """Remove what killed runs left beside the memory ``out`` (call while holding its
    :class:`~mmmaps.memory.build_lock.BuildLock`): temporary directories of interrupted
    merges/publishes (``.<out>.partial-*``, ``.<out>.old-*``), temporary chunk files of dead
    processes of this host, and a ``build_dir`` without a plan, or whose plan is that of the
    published memory when ``published_intact`` (the merge was killed while cleaning up).
    Returns the removed paths."""
    parent, base = osp.dirname(out), osp.basename(out)
    removed = []
    if osp.isdir(parent):
        for name in sorted(os.listdir(parent)):
            if name.startswith((f'.{base}.partial-', f'.{base}.old-')):
                removed.append(osp.join(parent, name))
    chunks = chunk_dir(build_dir)
    if osp.isdir(chunks):  # temporary chunks of dead processes of this host (not of shards
        host = socket.gethostname()  # still running here or elsewhere)
        for name in sorted(os.listdir(chunks)):
            owner = temporary_chunk_owner(name)
            if owner is not None and owner[0] == host and not process_alive(owner[1]):
                removed.append(osp.join(chunks, name))
    if osp.isdir(build_dir):
        plan_path = osp.join(build_dir, PLAN_FILE)
        published = None
        if published_intact:
            published = read_root_manifest(out).get('plan')
        try:
            with open(plan_path) as f:
                plan = json.load(f)
        except (OSError, ValueError):
            plan = None
        if plan is None or (published is not None and plan == published):
            removed.append(build_dir)
    for path in removed:
        print_log(f'removing {path} (left by an interrupted build)', logger='current')
        if osp.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif osp.exists(path):
            os.remove(path)
    return removed
