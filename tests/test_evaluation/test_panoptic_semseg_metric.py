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


def test_panoptic_metric_before_it_leaves_void_alone(tmp_path):
    """mmdet 3.3's CocoPanopticMetric rewrites void to 0 in the CPU prediction it reads;
    FastCocoPanopticMetric works on a copy, so PanopticSemSegMetric after it in the
    evaluator list still sees void (a miss), not class 0."""
    from mmdet.evaluation.metrics import CocoPanopticMetric
    from mmmaps.evaluation.metrics import FastCocoPanopticMetric
    num_classes = 3
    meta = dict(classes=['a', 'b', 'c'], thing_classes=['a', 'b'], stuff_classes=['c'])
    pan = torch.tensor([[[num_classes, 2], [0 + INSTANCE_OFFSET, num_classes]]])
    gt = torch.tensor([[[0, 2], [0, 1]]])

    def sample():
        return dict(img_id=1, img_path='x.jpg', ori_shape=(2, 2), seg_map_path='x.png',
                    segments_info=[], pred_panoptic_seg=dict(sem_seg=pan.clone()),
                    gt_sem_seg=dict(sem_seg=gt.clone()))

    results = {}
    for panoptic_type in (CocoPanopticMetric, FastCocoPanopticMetric):
        panoptic = panoptic_type(outfile_prefix=str(tmp_path / panoptic_type.__name__))
        semantic = PanopticSemSegMetric()
        panoptic.dataset_meta = semantic.dataset_meta = meta
        data = sample()
        panoptic._parse_predictions(data, 1, 'x.png')  # what process() does per image
        semantic.process({}, [data])
        results[panoptic_type] = semantic.compute_metrics(semantic.results)['mIoU']
    # hand-computed: 'a' is hit at (1, 0) and missed at (0, 0) (void), 'c' hit, 'b' missed
    # (void): IoU a = 1/2, b = 0, c = 1 -> mIoU 50
    assert results[FastCocoPanopticMetric] == 50.0
    # mmdet's in-place rewrite turns both void pixels into 'a': a = 2/3 (the miss at
    # (0, 0) becomes a hit, (1, 1) a false positive), b = 0, c = 1
    assert results[CocoPanopticMetric] == round(100 * (2 / 3 + 0 + 1) / 3, 2)
