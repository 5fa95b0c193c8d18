"""Checkpoints load with torch's weights-only unpickler on every torch line (issue 14).

Independent references: a crafted pickle whose ``__reduce__`` would create a sentinel file
(the file must not appear), ``fractions.Fraction`` as a type mmengine never writes, and a
training run resumed through ``tools/train.py`` whose checkpoint state is read back with
plain ``zipfile``/``hashlib`` where it matters.
"""
import fractions
import hashlib
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import mmmaps  # noqa: F401  (registers the loaders)
from mmmaps.utils.checkpoint_loading import (TRUST_ENV, UntrustedCheckpointError,
                                             safe_torch_load)
from tests.conftest import REPO_ROOT, run_tool

TINY_MAPS = osp.join(REPO_ROOT, 'configs', 'maps', 'maps_r18_synthetic-panoptic.py')
LOADERS = [f'{split}_dataloader.{k}' for split in ('train', 'val', 'test')
           for k in ('num_workers=0', 'persistent_workers=False')]


class _Payload:
    """Unpickling this runs ``touch SENTINEL`` (what a crafted checkpoint does)."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f'touch {self.sentinel}',))


def _crafted(tmp_path):
    sentinel = tmp_path / 'code_ran'
    path = tmp_path / 'crafted.pth'
    torch.save({'state_dict': {}, 'meta': {'evil': _Payload(sentinel)}}, path)
    return str(path), sentinel


def test_crafted_checkpoint_runs_no_code_through_mmengine(tmp_path):
    from mmengine.runner.checkpoint import _load_checkpoint
    path, sentinel = _crafted(tmp_path)
    with pytest.raises(UntrustedCheckpointError) as err:
        _load_checkpoint(path, map_location='cpu')
    assert not sentinel.exists()
    message = str(err.value)
    assert path in message and 'posix.system' in message and TRUST_ENV in message


@pytest.mark.parametrize('tool', ['test', 'resume', 'demo'])
def test_crafted_checkpoint_runs_no_code_in_the_tools(tool, synthetic_root, synthetic_memory,
                                                      tmp_path):
    path, sentinel = _crafted(tmp_path)
    memory = f'memory.root={synthetic_memory}'
    if tool == 'test':
        args = ['tools/test.py', TINY_MAPS, path, '--work-dir', str(tmp_path / 'w'),
                '--cfg-options', memory] + LOADERS
    elif tool == 'resume':
        args = ['tools/train.py', TINY_MAPS, '--work-dir', str(tmp_path / 'w'), '--resume',
                path, '--cfg-options', 'train_cfg.max_iters=1', memory] + LOADERS
    else:
        image = osp.join(synthetic_root, 'val', sorted(os.listdir(
            osp.join(synthetic_root, 'val')))[0])
        args = ['demo/image_demo.py', image, TINY_MAPS, path, '--out-file',
                str(tmp_path / 'out.png'), '--cfg-options', memory]
    env = dict(os.environ, MMMAPS_SYNTHETIC_ROOT=synthetic_root,
               PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')])))
    proc = subprocess.run([sys.executable] + args, cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0
    assert not sentinel.exists(), f'{tool}: the crafted checkpoint ran code'
    assert 'posix.system' in proc.stderr and TRUST_ENV in proc.stderr, proc.stderr[-3000:]


def test_untrusted_type_is_named_and_can_be_trusted_explicitly(tmp_path, monkeypatch):
    path = str(tmp_path / 'fraction.pth')
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'ratio': fractions.Fraction(3, 7)}},
               path)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(UntrustedCheckpointError, match='fractions.Fraction'):
        safe_torch_load(path)
    monkeypatch.setenv(TRUST_ENV, 'fractions.Fraction')
    loaded = safe_torch_load(path)
    assert loaded['meta']['ratio'] == fractions.Fraction(3, 7)
    assert torch.equal(loaded['state_dict']['w'], torch.ones(2))
    monkeypatch.setenv(TRUST_ENV, 'fractions.NoSuchType')
    with pytest.raises(ValueError, match='fractions.NoSuchType'):
        safe_torch_load(path)


def test_every_mmengine_scheme_loads_through_mmmaps():
    from mmengine.runner import CheckpointLoader
    schemes = dict(CheckpointLoader._schemes)
    assert '' in schemes and 'https://' in schemes and 'torchvision://' in schemes
    foreign = {p: f'{f.__module__}.{f.__name__}' for p, f in schemes.items()
               if f.__module__ != 'mmmaps.utils.checkpoint_loading'}
    assert not foreign, f'schemes that still unpickle without weights_only: {foreign}'


def test_resume_restores_iteration_optimizer_and_memory(synthetic_root, synthetic_memory,
                                                        tmp_path):
    """Train 2 iterations, resume to 3 from iter_2.pth (weights-only load on this torch)."""
    work = str(tmp_path / 'work')
    common = ['--work-dir', work, '--cfg-options', 'train_cfg.val_interval=100',
              'default_hooks.checkpoint.interval=1', 'train_dataloader.batch_size=2',
              f'memory.root={synthetic_memory}'] + LOADERS
    run_tool(['tools/train.py', TINY_MAPS] + common[:3] + ['train_cfg.max_iters=2'] +
             common[3:], synthetic_root)
    first = safe_torch_load(osp.join(work, 'iter_2.pth'), map_location='cpu')
    proc = run_tool(['tools/train.py', TINY_MAPS, '--resume', osp.join(work, 'iter_2.pth')] +
                    common[:3] + ['train_cfg.max_iters=3'] + common[3:], synthetic_root)
    assert 'resumed epoch: 0, iter: 2' in proc.stdout + proc.stderr
    resumed = safe_torch_load(osp.join(work, 'iter_3.pth'), map_location='cpu')
    assert resumed['meta']['iter'] == 3
    # AdamW counts its steps per parameter: 2 before the checkpoint + 1 after resuming
    steps = {float(s['step']) for s in resumed['optimizer']['state'].values()}
    assert steps == {3.0}, steps
    assert {float(s['step']) for s in first['optimizer']['state'].values()} == {2.0}
    # the memory recorded in meta is the memory on disk (its manifest's own sha256)
    with open(osp.join(synthetic_memory, 'manifest.json'), 'rb') as f:
        manifest_sha = hashlib.sha256(f.read()).hexdigest()
    for ckpt in (first, resumed):
        assert ckpt['meta']['memory']['manifest_sha256'] == manifest_sha
        assert ckpt['meta']['memory']['root'] == synthetic_memory


def test_crafted_encoder_checkpoint_runs_no_code(tmp_path):
    """Memory encoder weights (``pretrained=PATH``) are unpickled weights-only too."""
    import pickle

    from mmmaps.memory.encoders import build_memory_encoder
    from mmmaps.memory.encoders.weights import clear_tower_cache
    path, sentinel = _crafted(tmp_path)
    clear_tower_cache()
    with pytest.raises(pickle.UnpicklingError):
        encoder = build_memory_encoder(dict(type='CLIPCLSEncoder', arch='ViT-S-16',
                                            pretrained=path))
        encoder(torch.zeros(1, 3, 64, 64))  # in case the tower is built on first use
    assert not sentinel.exists()
