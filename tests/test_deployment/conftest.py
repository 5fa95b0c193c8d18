import os
import os.path as osp
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

TINY_CONFIGS = dict(
    mask2former='configs/mask2former/mask2former_r18_synthetic-panoptic.py',
    maps='configs/maps/maps_r18_synthetic-panoptic.py',
    panoptic_segformer='configs/panoptic_segformer/panoptic-segformer_r18_synthetic.py')
TRAIN_ITERS = 60
SERIAL_LOADERS = [f'{split}_dataloader.{key}' for split in ('train', 'val', 'test')
                  for key in ('num_workers=0', 'persistent_workers=False')]


def tool_env(synthetic_root):
    return dict(os.environ, MMMAPS_SYNTHETIC_ROOT=synthetic_root, OMP_NUM_THREADS='1',
                PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT,
                                                         os.environ.get('PYTHONPATH')])))


@pytest.fixture(scope='session')
def trained_tiny(synthetic_root, synthetic_memory, tmp_path_factory):
    """The three tiny models trained for a few iterations on the session's synthetic set
    (all at once, one thread each): name -> (config, checkpoint, --cfg-options list).

    A few iterations are enough to give non-void panoptic maps, so that PyTorch and
    onnxruntime results can be compared meaningfully."""
    folder = tmp_path_factory.mktemp('trained_tiny')
    jobs, out = {}, {}
    for name, config in TINY_CONFIGS.items():
        options = list(SERIAL_LOADERS)
        if name == 'maps':
            options.append(f'memory.root={synthetic_memory}')
        work_dir = str(folder / name)
        args = [sys.executable, 'tools/train.py', config, '--work-dir', work_dir,
                '--cfg-options', f'train_cfg.max_iters={TRAIN_ITERS}',
                f'train_cfg.val_interval={10 * TRAIN_ITERS}',
                f'default_hooks.checkpoint.interval={TRAIN_ITERS}'] + options
        log = open(osp.join(str(folder), f'{name}.log'), 'w')
        jobs[name] = (subprocess.Popen(args, cwd=REPO_ROOT, env=tool_env(synthetic_root),
                                       stdout=log, stderr=subprocess.STDOUT), log)
        out[name] = (osp.join(REPO_ROOT, config), osp.join(work_dir,
                                                           f'iter_{TRAIN_ITERS}.pth'), options)
    for name, (proc, log) in jobs.items():
        proc.wait(timeout=900)
        log.close()
        assert proc.returncode == 0, open(log.name).read()[-3000:]
    return out
