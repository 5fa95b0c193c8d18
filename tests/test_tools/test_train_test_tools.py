import json
import os
import os.path as osp
import subprocess
import sys

from panopticapi.evaluation import pq_compute

from tests.conftest import REPO_ROOT, TINY_M2F, run_tool


def test_train_two_iters_then_test(synthetic_root, tmp_path):
    work = str(tmp_path / 'work')
    run_tool(['tools/train.py', TINY_M2F, '--work-dir', work, '--cfg-options',
              'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
              'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=2',
              'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
              'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
              'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False'],
             synthetic_root)
    ckpt = osp.join(work, 'iter_2.pth')
    assert osp.isfile(ckpt)

    prefix = str(tmp_path / 'pred' / 'results')
    proc = run_tool(['tools/test.py', TINY_M2F, ckpt, '--work-dir', work, '--panoptic-out',
                     prefix, '--out', str(tmp_path / 'raw.pkl'), '--cfg-options',
                     'test_dataloader.num_workers=0',
                     'test_dataloader.persistent_workers=False'], synthetic_root)
    with open(osp.join(work, 'metrics.json')) as f:
        metrics = json.load(f)
    for key in ('coco_panoptic/PQ', 'coco_panoptic/PQ_th', 'coco_panoptic/PQ_st',
                'coco_panoptic/SQ', 'coco_panoptic/RQ', 'coco/segm_mAP', 'semseg/mIoU'):
        assert key in metrics, key
    assert 0 <= metrics['coco_panoptic/PQ'] <= 100
    assert 'PQ_th' in proc.stdout and 'mIoU' in proc.stdout  # the summary table
    assert osp.isfile(tmp_path / 'raw.pkl')

    ref = pq_compute(osp.join(synthetic_root, 'annotations', 'panoptic_val.json'),
                     f'{prefix}.panoptic.json',
                     gt_folder=osp.join(synthetic_root, 'annotations', 'panoptic_val'),
                     pred_folder=f'{prefix}.panoptic')
    assert abs(metrics['coco_panoptic/PQ'] - 100 * ref['All']['pq']) < 1e-9


def test_dist_scripts_run_one_process_on_cpu(synthetic_root, tmp_path):
    work = str(tmp_path / 'dist')
    loaders = [f'{split}_dataloader.{k}' for split in ('train', 'val', 'test')
               for k in ('num_workers=0', 'persistent_workers=False')]
    env = dict(os.environ, MMMAPS_SYNTHETIC_ROOT=synthetic_root, PYTHON=sys.executable,
               PORT='29611')
    train = subprocess.run(
        ['bash', 'tools/dist_train.sh', TINY_M2F, '1', '--work-dir', work, '--cfg-options',
         'train_cfg.max_iters=1', 'train_cfg.val_interval=100',
         'default_hooks.checkpoint.interval=1', 'train_dataloader.batch_size=2'] + loaders,
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-4000:]
    assert osp.isfile(osp.join(work, 'iter_1.pth'))
    test = subprocess.run(
        ['bash', 'tools/dist_test.sh', TINY_M2F, osp.join(work, 'iter_1.pth'), '1',
         '--work-dir', work, '--cfg-options'] + loaders[4:],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert test.returncode == 0, test.stderr[-4000:]
    with open(osp.join(work, 'metrics.json')) as f:
        assert 'coco_panoptic/PQ' in json.load(f)
