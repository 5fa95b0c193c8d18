import json
import os
import os.path as osp
import subprocess

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_main_job_learns(tmp_path):
    """README command 1, shortened: the trained model must beat its untrained init."""
    work = str(tmp_path / 'main_job')
    env = dict(os.environ, MAX_ITERS='300', WORK_DIR=work)
    proc = subprocess.run(['bash', 'tools/main_job.sh'], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(osp.join(work, 'untrained', 'metrics.json')) as f:
        untrained = json.load(f)
    with open(osp.join(work, 'test', 'metrics.json')) as f:
        trained = json.load(f)
    assert trained['coco_panoptic/PQ'] > untrained['coco_panoptic/PQ'] + 5
    assert trained['semseg/mIoU'] > untrained['semseg/mIoU'] + 10
    assert osp.getsize(osp.join(work, 'panoptic_overlay.png')) > 10_000
