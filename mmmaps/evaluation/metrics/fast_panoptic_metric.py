"""COCO panoptic quality with a choice of backend, and per-class PQ in the metrics.

``FastCocoPanopticMetric`` is mmdet's :class:`CocoPanopticMetric` with one more
argument, ``backend``, which chooses who computes PQ/SQ/RQ from the predictions:

* ``'mmdet'`` (default): mmdet's own copy of panopticapi's matcher
  (``pq_compute_single_core`` image by image inside ``process()`` when no
  ``outfile_prefix`` is given, ``pq_compute_multi_core`` over the written files
  otherwise): the parent's ``process()`` and the same calls in the same order as
  its ``compute_metrics()``, so the numbers are bit-for-bit the parent's (tested).
* ``'panopticapi'``: the reference. The metric writes the predictions in COCO
  panoptic format (PNG + JSON, as with ``outfile_prefix``) and calls
  ``panopticapi.evaluation.pq_compute`` on them. panopticapi always uses
  ``multiprocessing.cpu_count()`` processes; ``nproc`` does not apply.
* ``'hotcoco'``: the same files scored by ``hotcoco.panoptic.PanopticEval``
  (Rust, images in parallel on a rayon thread pool: ``RAYON_NUM_THREADS``
  threads, all cores by default; ``nproc`` does not apply), about 12-18x faster
  than panopticapi (benchmarks/pq_eval_speed.py). Not the default because it is
  not bit-identical to panopticapi: the match counts (so RQ) are identical, but
  the per-category IoU sums behind SQ and PQ are added in another order (hotcoco
  totals each image, then adds the image totals in image order, exactly as the
  default backend does without ``outfile_prefix``; panopticapi keeps one running
  total per worker process and adds the workers' totals), so SQ/PQ can differ in
  the last bits (measured up to 9e-16 as fractions on 1000 synthetic images).
  panopticapi's own last bits change with its process count by as much.

All three report the keys mmdet reports (``PQ``, ``SQ``, ``RQ``, ``PQ_th``,
``SQ_th``, ``RQ_th``, ``PQ_st``, ``SQ_st``, ``RQ_st``; percent), under the
``coco_panoptic/`` prefix.

``classwise=True`` prints mmdet's per-class table and, unlike the parent, also
returns the per-class numbers as ``{class}_PQ``, ``{class}_SQ``, ``{class}_RQ``
(percent) for every category of the ground truth, named as the ground truth
names them (the parent's table pairs ``dataset_meta['classes']`` with the
categories by position instead; the same for our datasets). A category with no segment on either side has no PQ; it is reported
as 0 and left out of the means, panopticapi's convention (and the table's).

The non-mmdet backends read the PNG files from disk: the ground truth
(``seg_prefix``) must be a local folder, and under distributed evaluation
``outfile_prefix`` must point at storage every rank shares.
"""
import json
import os.path as osp
import warnings
from contextlib import ExitStack
from typing import Dict, Optional, Sequence

from mmengine.dist import get_world_size
from mmengine.fileio import get_local_path, load
from mmengine.logging import MMLogger

from mmdet.datasets.api_wrappers import COCOPanoptic
from mmdet.evaluation.functional import pq_compute_multi_core
from mmdet.evaluation.metrics import CocoPanopticMetric
from mmdet.evaluation.metrics.coco_panoptic_metric import (PQStat, parse_pq_results,
                                                           print_panoptic_table)
from mmdet.registry import METRICS

PQ_BACKENDS = ('mmdet', 'hotcoco', 'panopticapi')
_SPLITS = (('All', None), ('Things', True), ('Stuff', False))


def _average(pq_stat, categories: dict) -> dict:
    """panopticapi's All/Things/Stuff means and per-class numbers from a ``PQStat``."""
    results = {}
    for name, isthing in _SPLITS:
        results[name], per_class = pq_stat.pq_average(categories, isthing=isthing)
        if name == 'All':
            results['per_class'] = per_class
    return results


def _folders(gt_json_file: str, pred_json_file: str, gt_folder: Optional[str],
             pred_folder: Optional[str]):
    if gt_folder is None:
        gt_folder = gt_json_file.replace('.json', '')
    if pred_folder is None:
        pred_folder = pred_json_file.replace('.json', '')
    for what, folder in (('ground truth', gt_folder), ('prediction', pred_folder)):
        if not osp.isdir(folder):
            raise FileNotFoundError(f'{what} segmentation folder {folder!r} does not exist')
    return gt_folder, pred_folder


def mmdet_pq_compute(gt_json_file: str, pred_json_file: str, gt_folder: Optional[str] = None,
                     pred_folder: Optional[str] = None, nproc: int = 32,
                     backend_args: Optional[dict] = None) -> dict:
    """panopticapi's ``pq_compute`` (same arguments, same result dict), computed by
    mmdet's ``pq_compute_multi_core`` with ``min(nproc, cpu_count())`` processes."""
    gt_folder, pred_folder = _folders(gt_json_file, pred_json_file, gt_folder, pred_folder)
    with open(gt_json_file) as f:
        gt_json = json.load(f)
    with open(pred_json_file) as f:
        pred_json = json.load(f)
    categories = {el['id']: el for el in gt_json['categories']}
    pred_annotations = {el['image_id']: el for el in pred_json['annotations']}
    matched = []
    for gt_ann in gt_json['annotations']:
        if gt_ann['image_id'] not in pred_annotations:
            raise KeyError(f'no prediction for the image with id: {gt_ann["image_id"]}')
        matched.append((gt_ann, pred_annotations[gt_ann['image_id']]))
    pq_stat = pq_compute_multi_core(matched, gt_folder, pred_folder, categories,
                                    backend_args=backend_args, nproc=nproc)
    return _average(pq_stat, categories)


def panopticapi_pq_compute(gt_json_file: str, pred_json_file: str,
                           gt_folder: Optional[str] = None,
                           pred_folder: Optional[str] = None) -> dict:
    """The reference: ``panopticapi.evaluation.pq_compute`` (``cpu_count()`` processes)."""
    from panopticapi.evaluation import pq_compute
    gt_folder, pred_folder = _folders(gt_json_file, pred_json_file, gt_folder, pred_folder)
    return pq_compute(gt_json_file, pred_json_file, gt_folder=gt_folder,
                      pred_folder=pred_folder)


def _load_without_nulls(json_file: str) -> dict:
    with open(json_file) as f:
        data = json.load(f)
    return {k: v for k, v in data.items() if v is not None}


def hotcoco_pq_compute(gt_json_file: str, pred_json_file: str, gt_folder: Optional[str] = None,
                       pred_folder: Optional[str] = None) -> dict:
    """``hotcoco.panoptic.PanopticEval`` on panopticapi's inputs, in panopticapi's result shape.

    hotcoco reports ``-1.0`` for a category with no segment on either side; that is
    turned into panopticapi's ``0.0`` (neither counts it in the means), and the
    per-class ``tp``/``fp``/``fn``/``iou`` it adds are kept. A run hotcoco does not
    call ``parity_verified`` (``reference_deviations()`` not empty) warns.
    """
    try:
        from hotcoco.panoptic import PanopticEval
    except ImportError as e:  # pragma: no cover - optional dependency
        raise ImportError("backend='hotcoco' needs the hotcoco package: "
                          'pip install hotcoco') from e
    gt_folder, pred_folder = _folders(gt_json_file, pred_json_file, gt_folder, pred_folder)
    try:
        ev = PanopticEval(gt_json_file, pred_json_file, gt_folder=gt_folder,
                          pred_folder=pred_folder)
    except ValueError:
        # hotcoco's strict parser rejects top-level nulls such as the ``"licenses": null``
        # that mmdet's CocoPanopticMetric.gt_to_coco_json writes; panopticapi ignores them
        gt, pred = (_load_without_nulls(f) for f in (gt_json_file, pred_json_file))
        ev = PanopticEval(gt, pred, gt_folder=gt_folder, pred_folder=pred_folder)
    deviations = ev.reference_deviations()
    if deviations:
        warnings.warn('hotcoco departs from panopticapi on these inputs: ' +
                      '; '.join(deviations))
    ev.evaluate()
    raw = ev.results()
    results = {name: dict(raw[name]) for name, _ in _SPLITS}
    per_class = {}
    for cat_id, res in raw['per_class'].items():
        res = dict(res)
        if res['tp'] + res['fp'] + res['fn'] == 0:
            res.update(pq=0.0, sq=0.0, rq=0.0)
        per_class[int(cat_id)] = res
    results['per_class'] = per_class
    return results


_FILE_BACKENDS = dict(panopticapi=panopticapi_pq_compute, hotcoco=hotcoco_pq_compute)


@METRICS.register_module()
class FastCocoPanopticMetric(CocoPanopticMetric):
    """:class:`CocoPanopticMetric` with a choice of PQ backend and per-class results.

    Args:
        backend (str): ``'mmdet'`` (default, the parent's computation, bit for
            bit), ``'panopticapi'`` (the reference ``pq_compute`` on the written
            files) or ``'hotcoco'`` (``hotcoco.panoptic.PanopticEval`` on the
            same files). See the module docstring.
        classwise (bool): print the per-class table and return
            ``{class}_PQ/_SQ/_RQ``. Defaults to False.
        **kwargs: the arguments of :class:`CocoPanopticMetric`.
    """

    def __init__(self, *args, backend: str = 'mmdet', **kwargs) -> None:
        if backend not in PQ_BACKENDS:
            raise ValueError(f'backend must be one of {PQ_BACKENDS}, got {backend!r}')
        super().__init__(*args, **kwargs)
        self.backend = backend
        # the parent keeps only the parsed file; the file backends read the json itself
        self.ann_file = kwargs.get('ann_file', args[0] if args else None)

    # ------------------------------------------------------------------ process
    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        if self.backend == 'mmdet':
            super().process(data_batch, data_samples)
            return
        # the file backends score the written PNG/JSON files: always write them
        if self.tmp_dir is not None and get_world_size() > 1:
            raise RuntimeError(
                f'FastCocoPanopticMetric(backend={self.backend!r}) in distributed evaluation '
                'needs outfile_prefix on storage that every rank shares')
        self._process_gt_and_predictions(data_samples)

    def _parse_predictions(self, pred: dict, img_id: int, segm_file: str,
                           label2cat=None) -> dict:
        """The parent's, on a copy of the panoptic map.

        mmdet 3.3's rewrites void to 0 in the array it reads, which for a CPU tensor is
        the prediction itself: a metric after it in the evaluator list (e.g.
        ``PanopticSemSegMetric``) would then score void pixels as class 0.
        """
        panoptic = dict(pred['pred_panoptic_seg'])
        panoptic['sem_seg'] = panoptic['sem_seg'].clone()
        return super()._parse_predictions(dict(pred, pred_panoptic_seg=panoptic), img_id,
                                          segm_file, label2cat)

    # ------------------------------------------------------------------ compute
    def compute_metrics(self, results: list) -> Dict[str, float]:
        logger: MMLogger = MMLogger.get_current_instance()
        if self.backend == 'mmdet' and self.tmp_dir is not None:
            pq_results = self._pq_from_batch_stats(results)
        else:
            pq_results = self._pq_from_files(results)
            if pq_results is None:  # format_only
                return dict()

        classwise_results = None
        if self.classwise:
            classwise_results = {
                self.categories[cat_id]['name']: res
                for cat_id, res in pq_results['per_class'].items()}
        print_panoptic_table(pq_results, classwise_results, logger=logger)
        metrics = parse_pq_results(pq_results)
        if classwise_results is not None:
            for name, res in classwise_results.items():
                for key in ('pq', 'sq', 'rq'):
                    metrics[f'{name}_{key.upper()}'] = float(100 * res[key])
        return metrics

    def _pq_from_batch_stats(self, results: list) -> dict:
        """The parent's in-memory branch: sum the per-batch ``PQStat``s."""
        if self._coco_api is None:
            categories = dict()
            for id, name in enumerate(self.dataset_meta['classes']):
                isthing = 1 if name in self.dataset_meta['thing_classes'] else 0
                categories[id] = {'id': id, 'name': name, 'isthing': isthing}
            self.categories = categories
        pq_stat = PQStat()
        for result in results:
            pq_stat += result
        return _average(pq_stat, self.categories)

    def _pq_from_files(self, results: list) -> Optional[dict]:
        """The parent's file branch (write the JSON, score the PNG/JSON files) with
        the scorer chosen by ``backend``. None when ``format_only``."""
        logger: MMLogger = MMLogger.get_current_instance()
        gts, preds = zip(*results)
        with ExitStack() as stack:
            if self._coco_api is None:
                logger.info('Converting ground truth to coco format...')
                gt_json_file, gt_folder = self.gt_to_coco_json(
                    gt_dicts=gts, outfile_prefix=self.outfile_prefix)
                self._coco_api = COCOPanoptic(gt_json_file)
                self._gt_json_file = gt_json_file
            elif getattr(self, '_gt_json_file', None) is not None:
                gt_json_file, gt_folder = self._gt_json_file, osp.dirname(
                    gts[0]['seg_map_path'])
            else:
                gt_json_file = stack.enter_context(
                    get_local_path(self.ann_file, backend_args=self.backend_args))
                gt_folder = self.seg_prefix

            self.cat_ids = self._coco_api.get_cat_ids(cat_names=self.dataset_meta['classes'])
            self.cat2label = {cat_id: i for i, cat_id in enumerate(self.cat_ids)}
            self.img_ids = self._coco_api.get_img_ids()
            self.categories = self._coco_api.cats

            json_filename, _ = self.result2json(results=preds,
                                                outfile_prefix=self.outfile_prefix)
            # the parent returns tempfile.gettempdir() here without outfile_prefix
            pred_folder = self.seg_out_dir
            if self.format_only:
                logger.info(f'results are saved in {osp.dirname(self.outfile_prefix)}')
                return None

            if self.backend == 'mmdet':
                return self._mmdet_multi_core(json_filename, gt_folder, pred_folder)
            logger.info(f'Computing PQ with {self.backend}...')
            return _FILE_BACKENDS[self.backend](gt_json_file, json_filename,
                                                gt_folder=gt_folder, pred_folder=pred_folder)

    def _mmdet_multi_core(self, json_filename: str, gt_folder: str, pred_folder: str) -> dict:
        """The parent's ``pq_compute_multi_core`` call, images in the parent's order."""
        imgs = self._coco_api.imgs
        gt_json = [{
            'image_id': k,
            'segments_info': v,
            'file_name': imgs[k]['segm_file']
        } for k, v in self._coco_api.img_ann_map.items()]
        pred_json = load(json_filename)
        pred_json = dict((el['image_id'], el) for el in pred_json['annotations'])
        matched_annotations_list = []
        for gt_ann in gt_json:
            img_id = gt_ann['image_id']
            if img_id not in pred_json.keys():
                raise Exception('no prediction for the image with id: {}'.format(img_id))
            matched_annotations_list.append((gt_ann, pred_json[img_id]))
        pq_stat = pq_compute_multi_core(matched_annotations_list, gt_folder, pred_folder,
                                        self.categories, backend_args=self.backend_args,
                                        nproc=self.nproc)
        return _average(pq_stat, self.categories)
