"""mmdet's CocoPanopticMetric, as tools/test.py runs it, against panopticapi's pq_compute."""
import json
import os
import os.path as osp

import cv2
import numpy as np
import torch
from panopticapi.evaluation import pq_compute
from panopticapi.utils import id2rgb, rgb2id

from mmdet.evaluation import CocoPanopticMetric
from mmdet.evaluation.functional import INSTANCE_OFFSET
from mmmaps.datasets import SYNTHETIC_METAINFO


def _perturbed_predictions(root, split='val', seed=0):
    """Predictions made from the ground truth with realistic errors, as mmdet label maps."""
    rng = np.random.default_rng(seed)
    with open(osp.join(root, 'annotations', f'panoptic_{split}.json')) as f:
        pan = json.load(f)
    num_classes = len(SYNTHETIC_METAINFO['classes'])
    out = []
    for ann in pan['annotations']:
        png = cv2.imread(osp.join(root, 'annotations', f'panoptic_{split}', ann['file_name']))
        ids = rgb2id(png[..., ::-1])
        pred = np.full(ids.shape, num_classes, dtype=np.int64)  # void
        for k, seg in enumerate(ann['segments_info']):
            mask = ids == seg['id']
            r = rng.random()
            if r < 0.15:
                continue  # missed segment
            label = seg['category_id'] - 1
            if r < 0.3:
                label = int(rng.integers(num_classes))  # wrong class
            if r > 0.8:
                mask = np.roll(mask, int(rng.integers(1, 6)), axis=1)  # sloppy mask
            pred[mask] = label + (k + 1) * INSTANCE_OFFSET
        out.append((ann['image_id'], ann['file_name'], pred))
    return out


def _run_metric(root, preds, outfile_prefix=None):
    metric = CocoPanopticMetric(
        ann_file=osp.join(root, 'annotations', 'panoptic_val.json'),
        seg_prefix=osp.join(root, 'annotations', 'panoptic_val'),
        outfile_prefix=outfile_prefix)
    metric.dataset_meta = SYNTHETIC_METAINFO
    for image_id, file_name, pred in preds:
        metric.process({}, [dict(
            img_id=image_id, img_path=file_name.replace('.png', '.jpg'),
            ori_shape=pred.shape,
            seg_map_path=osp.join(root, 'annotations', 'panoptic_val', file_name),
            segments_info=[],  # unused when ann_file is given
            pred_panoptic_seg=dict(sem_seg=torch.from_numpy(pred)[None]))])
    return metric.compute_metrics(metric.results)


def test_pq_equals_panopticapi(synthetic_root, tmp_path):
    root = synthetic_root
    preds = _perturbed_predictions(root)
    prefix = str(tmp_path / 'results')
    metrics = _run_metric(root, preds, outfile_prefix=prefix)
    in_memory = _run_metric(root, preds)

    ref = pq_compute(osp.join(root, 'annotations', 'panoptic_val.json'),
                     f'{prefix}.panoptic.json',
                     gt_folder=osp.join(root, 'annotations', 'panoptic_val'),
                     pred_folder=f'{prefix}.panoptic')
    assert 5 < metrics['PQ'] < 95, 'the perturbation must give a non-trivial PQ'
    for ours, theirs in (('PQ', 'All'), ('PQ_th', 'Things'), ('PQ_st', 'Stuff')):
        assert abs(metrics[ours] - 100 * ref[theirs]['pq']) < 1e-9
        assert abs(in_memory[ours] - 100 * ref[theirs]['pq']) < 1e-9
    assert abs(metrics['SQ'] - 100 * ref['All']['sq']) < 1e-9
    assert abs(metrics['RQ'] - 100 * ref['All']['rq']) < 1e-9
    assert len(os.listdir(f'{prefix}.panoptic')) == len(preds)
