"""FastCocoPanopticMetric's backends against panopticapi, per-class PQ, and segm AP against
pycocotools, on the session's synthetic dataset with predictions made from the ground truth."""
import importlib.util
import json
import os.path as osp

import numpy as np
import pytest
import torch
from panopticapi.evaluation import pq_compute
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mmdet.evaluation import CocoPanopticMetric
from mmdet.registry import METRICS
from mmmaps.datasets import SYNTHETIC_METAINFO
from mmmaps.evaluation.metrics import FastCocoPanopticMetric
from mmmaps.evaluation.metrics.fast_panoptic_metric import PQ_BACKENDS
from tests.conftest import REPO_ROOT, load_config_with_root
from tests.test_evaluation.test_pq_matches_panopticapi import _perturbed_predictions

SYNTHETIC_CFG = osp.join(REPO_ROOT, 'configs', '_base_', 'datasets', 'synthetic_panoptic.py')
HEADLINE = {'PQ': ('All', 'pq'), 'SQ': ('All', 'sq'), 'RQ': ('All', 'rq'),
            'PQ_th': ('Things', 'pq'), 'SQ_th': ('Things', 'sq'), 'RQ_th': ('Things', 'rq'),
            'PQ_st': ('Stuff', 'pq'), 'SQ_st': ('Stuff', 'sq'), 'RQ_st': ('Stuff', 'rq')}
BACKENDS = list(PQ_BACKENDS)  # hotcoco is a test requirement: its absence must fail


def _samples(root, preds, with_gt_segments=False):
    """mmdet data samples as the test loop hands them to the metric."""
    gt = {}
    if with_gt_segments:  # the dataset's segments_info, for a metric without ann_file
        with open(osp.join(root, 'annotations', 'panoptic_val.json')) as f:
            pan = json.load(f)
        isthing = {c['id']: c['isthing'] for c in pan['categories']}
        gt = {a['image_id']: [dict(id=s['id'], category=s['category_id'] - 1,
                                   is_thing=bool(isthing[s['category_id']]))
                              for s in a['segments_info']] for a in pan['annotations']}
    for image_id, file_name, pred in preds:
        yield dict(img_id=image_id, img_path=file_name.replace('.png', '.jpg'),
                   ori_shape=pred.shape,
                   seg_map_path=osp.join(root, 'annotations', 'panoptic_val', file_name),
                   segments_info=gt.get(image_id, []),
                   pred_panoptic_seg=dict(sem_seg=torch.from_numpy(pred.copy())[None]))


def _evaluate(metric_cls, root, preds, ann_file=True, **kwargs):
    """Run a panoptic metric the way the evaluator does; keys without the prefix."""
    metric = metric_cls(
        ann_file=osp.join(root, 'annotations', 'panoptic_val.json') if ann_file else None,
        seg_prefix=osp.join(root, 'annotations', 'panoptic_val'), nproc=2, **kwargs)
    metric.dataset_meta = SYNTHETIC_METAINFO
    for sample in _samples(root, preds, with_gt_segments=not ann_file):
        metric.process({}, [sample])
    out = metric.evaluate(len(preds))
    return {k.split('/', 1)[1]: v for k, v in out.items()}


@pytest.fixture(scope='module')
def reference(synthetic_root, tmp_path_factory):
    """panopticapi's pq_compute on the files mmdet's CocoPanopticMetric writes."""
    root = synthetic_root
    preds = _perturbed_predictions(root)
    prefix = str(tmp_path_factory.mktemp('pq_reference') / 'results')
    _evaluate(CocoPanopticMetric, root, preds, outfile_prefix=prefix)
    ref = pq_compute(osp.join(root, 'annotations', 'panoptic_val.json'),
                     f'{prefix}.panoptic.json',
                     gt_folder=osp.join(root, 'annotations', 'panoptic_val'),
                     pred_folder=f'{prefix}.panoptic')
    names = {i + 1: name for i, name in enumerate(SYNTHETIC_METAINFO['classes'])}
    per_class = {names[cat_id]: res for cat_id, res in ref['per_class'].items()}
    return preds, ref, per_class


def _assert_matches_reference(metrics, ref, per_class, tol=1e-9):
    assert 5 < metrics['PQ'] < 95, 'the perturbation must give a non-trivial PQ'
    for key, (split, q) in HEADLINE.items():
        assert abs(metrics[key] - 100 * ref[split][q]) < tol, (key, metrics[key], ref[split])
    assert len(per_class) == len(SYNTHETIC_METAINFO['classes'])
    for name, res in per_class.items():
        for q in ('pq', 'sq', 'rq'):
            key = f'{name}_{q.upper()}'
            assert abs(metrics[key] - 100 * res[q]) < tol, (key, metrics[key], res)
    # the per-class numbers are not all equal (the check would be weak otherwise)
    assert len({round(r['pq'], 6) for r in per_class.values()}) > 3


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('mode', ['in_memory', 'outfile', 'no_ann_file'])
def test_backend_equals_panopticapi(reference, synthetic_root, tmp_path, backend, mode):
    preds, ref, per_class = reference
    kwargs = dict(backend=backend, classwise=True)
    if mode == 'outfile':
        kwargs['outfile_prefix'] = str(tmp_path / 'results')
    metrics = _evaluate(FastCocoPanopticMetric, synthetic_root, preds,
                        ann_file=mode != 'no_ann_file', **kwargs)
    _assert_matches_reference(metrics, ref, per_class)
    if mode == 'outfile':  # the files are where the user asked, readable by panopticapi
        assert len(list((tmp_path / 'results.panoptic').iterdir())) == len(preds)


@pytest.mark.parametrize('outfile', [False, True])
def test_default_backend_is_the_parent_bit_for_bit(reference, synthetic_root, tmp_path,
                                                   outfile):
    preds = reference[0]

    def prefix(name):
        return dict(outfile_prefix=str(tmp_path / name)) if outfile else {}

    parent = _evaluate(CocoPanopticMetric, synthetic_root, preds, **prefix('parent'))
    ours = _evaluate(FastCocoPanopticMetric, synthetic_root, preds, **prefix('ours'))
    assert ours == parent  # exact: same keys, same floats
    classwise = _evaluate(FastCocoPanopticMetric, synthetic_root, preds, classwise=True,
                          **prefix('classwise'))
    assert {k: classwise[k] for k in parent} == parent
    assert set(classwise) - set(parent) == {
        f'{c}_{q}' for c in SYNTHETIC_METAINFO['classes'] for q in ('PQ', 'SQ', 'RQ')}


def test_metric_registered_with_prefixed_keys_and_bad_backend():
    metric = METRICS.build(dict(type='FastCocoPanopticMetric', backend='panopticapi'))
    assert isinstance(metric, CocoPanopticMetric)
    assert metric.default_prefix == 'coco_panoptic'
    with pytest.raises(ValueError, match='backend'):
        FastCocoPanopticMetric(backend='detectron2')


def test_per_class_flag_sets_classwise_on_panoptic_evaluators(synthetic_root):
    spec = importlib.util.spec_from_file_location('mmmaps_tools_test',
                                                  osp.join(REPO_ROOT, 'tools', 'test.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    _set_panoptic_classwise, parse_args = tool._set_panoptic_classwise, tool.parse_args
    assert parse_args(['cfg.py', 'ckpt.pth', '--per-class']).per_class
    assert not parse_args(['cfg.py', 'ckpt.pth']).per_class
    cfg = load_config_with_root(SYNTHETIC_CFG, synthetic_root)
    cfg.test_evaluator.append(dict(type='FastCocoPanopticMetric', backend='hotcoco'))
    _set_panoptic_classwise(cfg)
    types = [e['type'] for e in cfg.test_evaluator]
    assert types == ['FastCocoPanopticMetric', 'CocoMetric', 'PanopticSemSegMetric',
                     'FastCocoPanopticMetric']
    assert [e.get('classwise') for e in cfg.test_evaluator] == [True, None, None, True]
    assert cfg.test_evaluator[3]['backend'] == 'hotcoco'
    cfg.test_evaluator = [dict(type='CocoMetric')]
    with pytest.raises(ValueError, match='per-class'):
        _set_panoptic_classwise(cfg)


# ---------------------------------------------------------------------------- segm AP
def _perturbed_instances(instances_json, seed=0):
    """Instance predictions from the ground-truth masks with misses, wrong classes,
    sloppy masks, duplicates and false positives; scores loosely follow quality."""
    rng = np.random.default_rng(seed)
    with open(instances_json) as f:
        coco = json.load(f)
    num_things = len(SYNTHETIC_METAINFO['thing_classes'])
    by_image = {img['id']: (img, []) for img in coco['images']}
    for ann in coco['annotations']:
        by_image[ann['image_id']][1].append(ann)
    out = []
    for image_id, (img, anns) in by_image.items():
        h, w = img['height'], img['width']
        dets = []  # (mask, label, score)
        for ann in anns:
            mask = mask_utils.decode(ann['segmentation']).astype(bool)
            label, score = ann['category_id'] - 1, rng.uniform(0.5, 1.0)
            r = rng.random()
            if r < 0.15:
                continue  # missed
            if r < 0.3:
                label, score = int(rng.integers(num_things)), rng.uniform(0.2, 0.9)
            if r > 0.7:  # sloppy mask
                mask = np.roll(mask, int(rng.integers(1, 5)), axis=int(rng.integers(2)))
                score = rng.uniform(0.1, 0.8)
            dets.append((mask, label, score))
            if rng.random() < 0.2:  # duplicate, lower score
                dets.append((np.roll(mask, 1, axis=0), label, score * 0.5))
        for _ in range(int(rng.integers(0, 3))):  # false positive boxes
            y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
            mask = np.zeros((h, w), bool)
            mask[y:y + 12, x:x + 12] = True
            dets.append((mask, int(rng.integers(num_things)), rng.uniform(0.0, 0.7)))
        masks = np.stack([d[0] for d in dets]) if dets else np.zeros((0, h, w), bool)
        labels = [d[1] for d in dets]
        scores = [d[2] for d in dets]
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        out.append(dict(
            img_id=image_id, ori_shape=(h, w),
            pred_instances=dict(masks=torch.from_numpy(masks),
                                labels=torch.tensor(labels, dtype=torch.long),
                                scores=torch.tensor(scores, dtype=torch.float32),
                                bboxes=torch.tensor(np.array(boxes, np.float32).reshape(-1, 4)))))
    return out


def test_segm_ap_equals_pycocotools(synthetic_root, tmp_path):
    cfg = load_config_with_root(SYNTHETIC_CFG, synthetic_root)
    (coco_cfg,) = [e for e in cfg.test_evaluator if e['type'] == 'CocoMetric']
    prefix = str(tmp_path / 'results')
    metric = METRICS.build(dict(coco_cfg, outfile_prefix=prefix))
    metric.dataset_meta = SYNTHETIC_METAINFO
    samples = _perturbed_instances(coco_cfg['ann_file'])
    for sample in samples:
        metric.process({}, [sample])
    metrics = metric.evaluate(len(samples))

    # pycocotools on the detections the metric dumped, default parameters
    gt = COCO(coco_cfg['ann_file'])
    with open(f'{prefix}.segm.json') as f:
        dets = json.load(f)
    assert len(dets) == sum(len(s['pred_instances']['labels']) for s in samples)
    for det in dets:  # mask area, not box area, for the size ranges (as mmdet does)
        det.pop('bbox')
    ev = COCOeval(gt, gt.loadRes(dets), 'segm')
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert 0.05 < ev.stats[0] < 0.95, f'AP {ev.stats[0]} is not a useful check'
    names = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')
    for i, name in enumerate(names):
        # CocoMetric rounds to 3 decimals
        assert metrics[f'coco/segm_{name}'] == float(f'{round(ev.stats[i], 3)}'), name


@pytest.mark.slow
def test_tools_test_per_class_writes_metrics_json(synthetic_root, tmp_path):
    """tools/test.py --per-class: per-class PQ in metrics.json, equal to panopticapi's."""
    from tests.conftest import TINY_M2F, run_tool
    work = str(tmp_path / 'work')
    loaders = [f'{split}_dataloader.{k}' for split in ('train', 'val', 'test')
               for k in ('num_workers=0', 'persistent_workers=False')]
    run_tool(['tools/train.py', TINY_M2F, '--work-dir', work, '--cfg-options',
              'train_cfg.max_iters=1', 'train_cfg.val_interval=100',
              'default_hooks.checkpoint.interval=1', 'train_dataloader.batch_size=2'] + loaders,
             synthetic_root)
    prefix = str(tmp_path / 'pred' / 'results')
    proc = run_tool(['tools/test.py', TINY_M2F, osp.join(work, 'iter_1.pth'), '--work-dir',
                     work, '--per-class', '--panoptic-out', prefix, '--cfg-options'] +
                    loaders[4:], synthetic_root)
    assert 'Classwise Panoptic Evaluation Results' in proc.stdout + proc.stderr
    with open(osp.join(work, 'metrics.json')) as f:
        metrics = json.load(f)
    ref = pq_compute(osp.join(synthetic_root, 'annotations', 'panoptic_val.json'),
                     f'{prefix}.panoptic.json',
                     gt_folder=osp.join(synthetic_root, 'annotations', 'panoptic_val'),
                     pred_folder=f'{prefix}.panoptic')
    assert abs(metrics['coco_panoptic/PQ'] - 100 * ref['All']['pq']) < 1e-9
    for i, name in enumerate(SYNTHETIC_METAINFO['classes']):
        for q in ('pq', 'sq', 'rq'):
            value = metrics[f'coco_panoptic/{name}_{q.upper()}']
            assert abs(value - 100 * ref['per_class'][i + 1][q]) < 1e-9
