import hashlib
import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_M2F = osp.join(REPO_ROOT, 'configs', 'mask2former', 'mask2former_r18_synthetic-panoptic.py')


@pytest.fixture(autouse=True)
def own_mmengine_instances():
    """Each test's runs get their own logger, message hub and visualizer.

    mmengine names them after the config file and the second the Runner starts, and hands an
    existing instance back by name: two in-process runs of one config in one second (two quick
    tests) would have the second write its log into the first one's work dir and none into its
    own. The ones a test creates are dropped when it ends (default scopes are left alone).
    """
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.visualization import Visualizer

    def kinds(cls):
        yield cls
        for sub in cls.__subclasses__():
            yield from kinds(sub)

    def run_named():
        return [cls for base in (MMLogger, MessageHub, Visualizer) for cls in kinds(base)]

    before = {cls: set(cls._instance_dict) for cls in run_named()}
    yield
    for cls in run_named():
        for name in set(cls._instance_dict) - before.get(cls, set()):
            instance = cls._instance_dict.pop(name)
            for handler in getattr(instance, 'handlers', []):
                handler.close()


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
    """A tiny synthetic dataset shared by the whole session (path ends with '/')."""
    from mmmaps.datasets import generate_synthetic_panoptic
    root = tmp_path_factory.mktemp('synthetic') / 'data'
    generate_synthetic_panoptic(str(root), num_train=8, num_val=4, seed=1, size=(64, 64),
                                progress=False)
    return str(root) + '/'


@pytest.fixture(scope='session')
def val_image(synthetic_root):
    """The first val image of the session's synthetic dataset (64x64)."""
    folder = os.path.join(synthetic_root, 'val')
    return os.path.join(folder, sorted(os.listdir(folder))[0])


@pytest.fixture
def synthetic_env(synthetic_root, monkeypatch):
    """Point the synthetic dataset config at the session dataset."""
    monkeypatch.setenv('MMMAPS_SYNTHETIC_ROOT', synthetic_root)
    return synthetic_root


def run_tool(args, env_root, cwd=REPO_ROOT, timeout=600):
    """Run a repo tool in a fresh interpreter, the way a user would."""
    # the checkout under test comes first, whatever checkout the venv's editable install is
    env = dict(os.environ, MMMAPS_SYNTHETIC_ROOT=env_root,
               PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')])))
    proc = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f'{args} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}'
    return proc


MEMORY_CFG = osp.join(REPO_ROOT, 'configs', 'memory',
                      'memory_tiled-clip_vit-s16_synthetic-panoptic.py')


def load_config_with_root(path, root, options=None):
    """Config.fromfile with the synthetic data root substituted (env read at load time)."""
    from mmengine.config import Config
    old = os.environ.get('MMMAPS_SYNTHETIC_ROOT')
    os.environ['MMMAPS_SYNTHETIC_ROOT'] = root
    try:
        cfg = Config.fromfile(path)
    finally:
        if old is None:
            del os.environ['MMMAPS_SYNTHETIC_ROOT']
        else:
            os.environ['MMMAPS_SYNTHETIC_ROOT'] = old
    if options:
        cfg.merge_from_dict(options)
    return cfg


def build_memory(cfg, out: str):
    """Build the memory of ``cfg`` into ``out`` in this process, on the CPU; the builder."""
    from mmmaps.memory.builder import MemoryBuilder
    builder = MemoryBuilder(cfg, out=out, device='cpu')
    builder.prepare(resume=False, force=False)
    builder.encode_chunks(progress=False)
    builder.merge()
    return builder


def build_tiny_memory(root: str, out: str) -> str:
    """The tiny memory (ViT-S/16 random init) of the synthetic train split under ``root``."""
    build_memory(load_config_with_root(MEMORY_CFG, root, {'memory.build.chunk_size': 3,
                                                          'memory.build.num_workers': 0}), out)
    return out


@pytest.fixture(scope='session')
def synthetic_memory(synthetic_root, tmp_path_factory):
    """The tiny memory of the session's synthetic train split."""
    return build_tiny_memory(synthetic_root, str(tmp_path_factory.mktemp('memory') /
                                                 'synthetic_train'))


def load_tool(relpath):
    """A repo script as a module (to call its main() in this process: no start-up)."""
    name = 'tool_' + re.sub(r'\W', '_', relpath)
    spec = importlib.util.spec_from_file_location(name, osp.join(REPO_ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def init_checkpoints(configs: dict, folder) -> dict:
    """{name: path} of the untrained weights of each config (tools/misc/init_checkpoint.py)
    written under ``folder``."""
    init_checkpoint = load_tool('tools/misc/init_checkpoint.py')
    out = {}
    for name, config in configs.items():
        out[name] = str(folder / f'{name}.pth')
        init_checkpoint.main([config, out[name]])
    return out


def tree_sha256(path: str) -> dict:
    """{relative path: sha256} of every file under the folder ``path`` (``{'.': ...}`` for a
    file): what a refusal must leave exactly as it was."""
    if osp.isfile(path):
        with open(path, 'rb') as f:
            return {'.': hashlib.sha256(f.read()).hexdigest()}
    out = {}
    for base, _, names in os.walk(path):
        for name in names:
            full = osp.join(base, name)
            with open(full, 'rb') as f:
                out[osp.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out
