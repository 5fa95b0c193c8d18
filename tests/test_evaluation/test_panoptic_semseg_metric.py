import numpy as np
import torch

from mmdet.evaluation.functional import INSTANCE_OFFSET
from mmmaps.evaluation import PanopticSemSegMetric


def _reference_miou(preds, gts, num_classes, ignore=255):
    """Direct confusion-matrix mIoU; void predictions (label == num_classes) are misses."""
    conf = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for pred, gt in zip(preds, gts):
        keep = gt != ignore
        np.add.at(conf, (gt[keep], pred[keep]), 1)
    inter = np.diag(conf)[:num_classes]
    union = conf[:num_classes, :].sum(1) + conf[:, :num_classes].sum(0)[:num_classes] - inter
    iou = inter / np.where(union > 0, union, np.nan)
    return np.nanmean(iou) * 100, conf


def test_miou_matches_confusion_matrix():
    rng = np.random.default_rng(0)
    num_classes = 5
    metric = PanopticSemSegMetric()
    metric.dataset_meta = dict(classes=[f'c{i}' for i in range(num_classes)])
    preds, gts = [], []
    for _ in range(4):
        gt = rng.integers(0, num_classes, size=(13, 17))
        gt[rng.random(gt.shape) < 0.1] = 255
        # mostly right, some wrong, some void
        pred = np.where(rng.random(gt.shape) < 0.7, gt % 255 % num_classes,
                        rng.integers(0, num_classes + 1, size=gt.shape))
        instance = rng.integers(0, 3, size=gt.shape)
        pan = pred + instance * INSTANCE_OFFSET
        preds.append(pred)
        gts.append(gt)
        metric.process({}, [dict(
            pred_panoptic_seg=dict(sem_seg=torch.from_numpy(pan)[None]),
            gt_sem_seg=dict(sem_seg=torch.from_numpy(gt)[None]))])
    results = metric.compute_metrics(metric.results)
    expected, conf = _reference_miou(preds, gts, num_classes)
    assert abs(results['mIoU'] - round(expected, 2)) < 1e-6
    # void predictions really were present
    assert conf[:, num_classes].sum() > 0


def test_missing_inputs_give_clear_errors():
    import pytest
    metric = PanopticSemSegMetric()
    metric.dataset_meta = dict(classes=['a'])
    with pytest.raises(KeyError, match='panoptic_on'):
        metric.process({}, [dict(gt_sem_seg=dict(sem_seg=torch.zeros(1, 2, 2)))])
    with pytest.raises(KeyError, match='with_seg'):
        metric.process({}, [dict(pred_panoptic_seg=dict(sem_seg=torch.zeros(1, 2, 2)))])
