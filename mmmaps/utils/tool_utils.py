"""Shared set-up for ``tools/train.py`` and ``tools/test.py``."""
import os
import os.path as osp
from typing import Any, Iterator, Optional, Tuple

import torch
from mmengine.config import Config

_REMOTE_PREFIXES = ('http://', 'https://', 'torchvision://', 'open-mmlab://', 'mmcls://',
                    'modelzoo://', 's3://', 'mmpretrain://')


def walk_config(node: Any, path: str = '') -> Iterator[Tuple[str, Any]]:
    """``(dotted key, value)`` of every node of a config dict, at any depth (lists as
    ``key[i]``), below ``path``."""
    if isinstance(node, dict):
        for key, value in node.items():
            sub = f'{path}.{key}' if path else str(key)
            yield sub, value
            yield from walk_config(value, sub)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from walk_config(value, f'{path}[{i}]')


def check_local_checkpoints(cfg: Config) -> None:
    """Raise a clear error for every ``init_cfg`` checkpoint that is a missing local file.

    Without this, mmengine fails deep inside ``init_weights`` with a message that
    does not say which config key points at the file.
    """
    for key, value in walk_config(cfg._cfg_dict.to_dict()):
        if not key.endswith('init_cfg') or not isinstance(value, dict):
            continue
        ckpt = value.get('checkpoint')
        if value.get('type') != 'Pretrained' or not isinstance(ckpt, str):
            continue
        if ckpt.startswith(_REMOTE_PREFIXES):
            continue
        if not osp.isfile(ckpt):
            raise FileNotFoundError(
                f'{key}.checkpoint = {ckpt!r} does not exist. Download the weights to that '
                f'path, point the config at a local copy (e.g. --cfg-options '
                f'{key}.checkpoint=/path/to/file.pth), or set {key}=None for random init.')


def load_tool_config(config: str, cfg_options: Optional[dict], work_dir: Optional[str],
                     launcher: str) -> Config:
    """Read a config for a tool: CLI overrides, default work_dir, a usable dist backend."""
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file {config!r} does not exist')
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    check_work_dir(cfg.work_dir, '--work-dir' if work_dir is not None else 'work_dir')
    if launcher == 'pytorch' and not torch.cuda.is_available():
        init_cpu_process_group()
        # mmengine passes device_ids=[LOCAL_RANK] to DDP, which CPU modules reject.
        cfg.setdefault('model_wrapper_cfg', dict(
            type='MMDistributedDataParallel', broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False)))
        cfg.model_wrapper_cfg['device_ids'] = None
    check_local_checkpoints(cfg)
    return cfg


def check_work_dir(work_dir: str, key: str = '--work-dir') -> None:
    """Raise ``NotADirectoryError`` naming ``work_dir`` when it is, or lies under, a file
    (mmengine would fail later with a bare ``FileExistsError``)."""
    path = osp.abspath(work_dir)
    probe = path
    while not osp.lexists(probe) and osp.dirname(probe) != probe:
        probe = osp.dirname(probe)
    if osp.isdir(probe):
        return
    if probe == path:
        raise NotADirectoryError(f'{key} {work_dir} is a file, expected a folder for the '
                                 f'logs and checkpoints: choose another {key}')
    raise NotADirectoryError(f'{key} {work_dir}: {probe} is a file, so the folder cannot be '
                             f'created under it: choose another {key}')


def tool_errors() -> tuple:
    """The errors ``tools/train.py``/``tools/test.py`` report as one line (``sys.exit``):
    problems of the user's files or settings, each message naming the file or key."""
    from ..datasets.preflight import ClassCountError
    from ..datasets.validation import DatasetValidationError
    from ..memory.storage import MemoryBankError
    from .checkpoint_fit import CheckpointMismatchError
    from .checkpoint_loading import UnreadableCheckpointError, UntrustedCheckpointError
    from .output_dirs import OutputOwnershipError
    return (FileNotFoundError, NotADirectoryError, CheckpointMismatchError,
            UnreadableCheckpointError, UntrustedCheckpointError, DatasetValidationError,
            ClassCountError, MemoryBankError, OutputOwnershipError)


def init_cpu_process_group() -> None:
    """Start a gloo process group for a torchrun launch on a machine without CUDA.

    mmengine's ``init_dist('pytorch')`` always calls ``torch.cuda.set_device`` and
    defaults to NCCL; the Runner skips it when a process group already exists, so
    starting one here lets ``dist_train.sh``/``dist_test.sh`` run on CPU.
    """
    import torch.distributed as torch_dist
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend='gloo')


def parse_launch_args(parser, argv=None):
    """Add the options every runner tool shares (``--cfg-options``, ``--launcher``,
    ``--local-rank``), parse, and export LOCAL_RANK for torch.distributed."""
    from mmengine.config import DictAction
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy format')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    set_local_rank_env(args.local_rank)
    return args


def set_local_rank_env(local_rank: int) -> None:
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(local_rank)
