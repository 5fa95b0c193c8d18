"""What a memory build is asked to do: the config's ``memory`` section, the output folder,
the error a build reports, and the comparison of two build plans (a resumed build against
its partial build, an append against its parent)."""
import copy
import json
from typing import List

from mmengine.config import Config

from .config_schema import check_memory_cfg

PLAN_FILE = 'plan.json'  # the plan of a partial build, in ``<out>.build/``


class MemoryBuildError(RuntimeError):
    """A build cannot start or finish as asked (the message says why and what to do)."""


def memory_cfg_of(cfg: Config) -> dict:
    """The config's ``memory`` section as a plain dict, every key of it checked
    (:func:`~mmmaps.memory.config_schema.check_memory_cfg`)."""
    if 'memory' not in cfg:
        raise KeyError('the config has no `memory` section (key_encoder, dense_encoder, index, '
                       'root); see configs/_base_/memory/')
    memory = copy.deepcopy(cfg.memory)
    if hasattr(memory, 'to_dict'):
        memory = memory.to_dict()
    return dict(check_memory_cfg(memory))


def default_out(memory: dict, split: str) -> str:
    """The output folder of a build of ``split``: ``memory.root`` for train, else
    ``<memory.root>_<split>``."""
    root = memory.get('root')
    if not root:
        raise KeyError('memory.root is not set; pass --out DIR')
    return root if split == 'train' else f'{root.rstrip("/")}_{split}'


def as_saved(obj):
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj))


def plan_differences(previous: dict, current: dict, keys=None) -> List[str]:
    """Keys (of ``keys``, default all) whose values differ between two plans, as
    ``'key'`` or, for dict values such as encoder descriptions,
    ``'key.field (a != b)'`` naming the first differing fields."""
    previous, current = as_saved(previous), as_saved(current)
    keys = sorted(set(previous) | set(current)) if keys is None else list(keys)
    out = []
    for key in keys:
        a, b = previous.get(key), current.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            fields = [f for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
            out.append(f'{key}.' + ', '.join(
                f'{f} ({str(a.get(f))[:16]} != {str(b.get(f))[:16]})' for f in fields[:3]))
        else:
            out.append(key if not isinstance(a, (str, int, float, type(None))) else
                       f'{key} ({str(a)[:24]} != {str(b)[:24]})')
    return out
