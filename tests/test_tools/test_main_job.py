import json
import os
import os.path as osp
import subprocess

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_main_job_learns(tmp_path):
    """README command 1, shortened: the three trained models must beat their untrained
    init, and the memory the job built must hold the training split."""
    work = str(tmp_path / 'main_job')
    env = dict(os.environ, MAX_ITERS='300', WORK_DIR=work)
    proc = subprocess.run(['bash', 'tools/main_job.sh'], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for model, init in (('baseline', 'untrained'), ('maps', 'untrained'),
                        ('psf', 'untrained_psf')):
        with open(osp.join(work, init, 'metrics.json')) as f:
            untrained = json.load(f)
        with open(osp.join(work, model, 'test', 'metrics.json')) as f:
            trained = json.load(f)
        assert trained['coco_panoptic/PQ'] > untrained['coco_panoptic/PQ'] + 5, model
        assert trained['semseg/mIoU'] > untrained['semseg/mIoU'] + 10, model
        if model == 'psf':
            # the tiny paper-text Panoptic SegFormer after 300 iterations, seed 0: measured
            # PQ 36.8 (PQ_st 77.6, PQ_th 1.8: things come later) with the fixed losses
            assert trained['coco_panoptic/PQ'] > 30, trained
            assert trained['coco_panoptic/PQ_st'] > 70, trained
    for png in ('panoptic_overlay.png', 'panoptic_overlay_psf.png'):
        assert osp.getsize(osp.join(work, png)) > 10_000
    assert 'MAPS' in proc.stdout and 'Mask2Former' in proc.stdout
    assert 'Panoptic SegFormer' in proc.stdout and 'MAPS memory off' in proc.stdout
    assert 'python demo/web_demo.py configs/mask2former/' in proc.stdout
    memory = osp.join(REPO_ROOT, 'work_dirs', 'memory', 'synthetic_train_standin-clip')
    with open(osp.join(memory, 'manifest.json')) as f:
        assert json.load(f)['source']['num_images'] == 400
