import json
import os.path as osp

from panopticapi.evaluation import pq_compute

from tests.conftest import TINY_M2F, run_tool


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
