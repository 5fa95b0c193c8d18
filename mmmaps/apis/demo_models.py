"""The models behind the web demo (``demo/web_demo.py``), without any web framework: load a
checkpoint (PyTorch) or an ONNX export (onnxruntime), run one image, and return what the
page shows as plain arrays and rows.

A prediction is what ``demo/image_demo.py`` and ``tools/test.py`` compute for the same file:
the model reads the uploaded file through the config's test pipeline, and a MAPS memory
knows it by its content (query cache, leak guard), exactly as in a test run.
"""
import functools
import os.path as osp
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np

from .demo import DemoError
from .retrievals import BankImages, retrieved_objects
from .visualization import draw_panoptic, read_rgb

#: cfg options of the memory-off twin of a MAPS model (the paper's Table 7; the
#: ``test_memory_off`` row of README command 1)
MEMORY_OFF_OPTIONS = {'model.panoptic_head.use_scene_memory': False,
                      'model.panoptic_head.use_object_memory': False}
#: a panoptic thing segment is given the score of the detection whose mask overlaps it
#: at least this much (mask IoU): the query both came from
SCORE_MATCH_IOU = 0.5


@dataclass
class DemoPrediction:
    """What the page shows for one model and one image.

    Attributes:
        overlay (np.ndarray): (H, W, 3) RGB uint8, the panoptic prediction drawn on the image.
        segments (list[dict]): One row per predicted segment, largest first: ``class``,
            ``kind`` ('thing' / 'stuff'), ``instance``, ``area`` (pixels), ``score`` (the
            matched detection's score; None for stuff and unmatched things).
        seconds (float): Wall time of the model call (pipeline, retrieval, network,
            post-processing), not of the drawing.
        retrievals (list[dict]): MAPS: the retrieved scenes in rank order: ``rank`` (1-based),
            ``image_id``, ``similarity``, ``objects`` (class names of the retrieved objects of
            that scene), ``image`` (RGB array or None when its file is missing), ``file``.
        memory_off (DemoPrediction, optional): The same image with the memory switched off.
        sample (DetDataSample): The model's prediction itself.
    """
    overlay: np.ndarray
    segments: List[dict]
    seconds: float
    sample: object
    retrievals: List[dict] = field(default_factory=list)
    memory_off: Optional['DemoPrediction'] = None


def segment_rows(sample, dataset_meta: dict) -> List[dict]:
    """The segments of ``sample.pred_panoptic_seg`` as table rows (see :class:`DemoPrediction`).

    mmdet's panoptic map carries no score per segment; a thing segment gets the score of
    the same-class detection (``pred_instances``) whose mask overlaps it with IoU >=
    :data:`SCORE_MATCH_IOU` (the best one), so the table shows the confidence the model gave
    the query the segment came from.
    """
    from mmdet.evaluation.functional import INSTANCE_OFFSET

    if 'pred_panoptic_seg' not in sample:
        return []
    classes = dataset_meta['classes']
    things = set(dataset_meta.get('thing_classes') or ())
    pan = sample.pred_panoptic_seg.sem_seg[0].cpu().numpy()
    ids, areas = np.unique(pan, return_counts=True)
    instances = sample.get('pred_instances')
    masks = labels = scores = None
    if instances is not None and 'masks' in instances and len(instances):
        masks = instances.masks.cpu().numpy().astype(bool)
        labels = instances.labels.cpu().numpy()
        scores = instances.scores.cpu().numpy()
    rows = []
    for pan_id, area in zip(ids.tolist(), areas.tolist()):
        label = pan_id % INSTANCE_OFFSET
        if label >= len(classes):  # void
            continue
        name = classes[label]
        score = None
        if name in things and masks is not None and masks.shape[1:] == pan.shape:
            segment = pan == pan_id
            best = 0.0
            for j in np.flatnonzero(labels == label):
                inter = np.logical_and(masks[j], segment).sum()
                iou = inter / max(np.logical_or(masks[j], segment).sum(), 1)
                if iou >= SCORE_MATCH_IOU and iou > best:
                    best, score = iou, float(scores[j])
        rows.append(dict(**{'class': name}, kind='thing' if name in things else 'stuff',
                         instance=pan_id // INSTANCE_OFFSET, area=int(area), score=score))
    return sorted(rows, key=lambda r: -r['area'])


class DemoModel:
    """One model of the demo, loaded once; :meth:`predict` runs one image file.

    Build it with :meth:`from_checkpoint` (PyTorch) or :meth:`from_export` (onnxruntime).

    Args:
        name (str): What the page calls it.
        backend (str): 'pytorch' or 'onnxruntime'.
        run (callable): image file -> ``DetDataSample`` (the model's prediction).
        dataset_meta (dict): Classes, thing classes and palette of the config's test set.
        cfg (Config): The model's config (its train dataset locates the memory's images).
        memory (ExternalMemory, optional): The memory a MAPS model reads.
        run_memory_off (callable, optional): The same for the memory-off twin.
        memory_off_unavailable (str, optional): Why there is no memory-off twin (shown).
    """

    def __init__(self, name: str, backend: str, run: Callable, dataset_meta: dict, cfg,
                 memory=None, run_memory_off: Optional[Callable] = None,
                 memory_off_unavailable: Optional[str] = None):
        self.name, self.backend, self.cfg = name, backend, cfg
        self.dataset_meta = dataset_meta
        self.memory = memory
        self._run, self._run_memory_off = run, run_memory_off
        self.memory_off_unavailable = memory_off_unavailable
        self._bank_images = None
        if memory is not None:
            self.bank_classes = list(memory.root.source.get('classes') or
                                     dataset_meta['classes'])

    @property
    def reads_memory(self) -> bool:
        return self.memory is not None

    @classmethod
    def from_checkpoint(cls, config: str, checkpoint: str, device: str = 'cpu',
                        memory_root: Optional[str] = None, cfg_options: Optional[dict] = None,
                        name: Optional[str] = None) -> 'DemoModel':
        """A config and checkpoint through :func:`~mmmaps.apis.init_panoptic_model` (the checks
        of ``tools/test.py``). A MAPS model also gets its memory-off twin (same checkpoint,
        :data:`MEMORY_OFF_OPTIONS`, no memory loaded)."""
        from mmengine.config import Config

        from .inference import inference_panoptic, init_panoptic_model
        for what, path in (('config', config), ('checkpoint', checkpoint)):
            if not osp.isfile(path):
                raise FileNotFoundError(f'{what} {path} does not exist')
        cfg = Config.fromfile(config)
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        model = init_panoptic_model(cfg, checkpoint, device=device, memory_root=memory_root)
        memory = getattr(model, 'memory', None)
        if memory_root is not None and memory is None:
            raise DemoError(f'--memory: {config} builds a {type(model).__name__}, which reads '
                            'no memory')
        run_memory_off = None
        if memory is not None:
            off_cfg = Config.fromfile(config)
            off_cfg.merge_from_dict(dict(cfg_options or {}, **MEMORY_OFF_OPTIONS))
            off_model = init_panoptic_model(off_cfg, checkpoint, device=device)
            run_memory_off = functools.partial(inference_panoptic, off_model)
        return cls(name or osp.splitext(osp.basename(config))[0], 'pytorch',
                   functools.partial(inference_panoptic, model), model.dataset_meta, model.cfg,
                   memory=memory, run_memory_off=run_memory_off)

    @classmethod
    def from_export(cls, export_dir: str, memory_root: Optional[str] = None,
                    num_threads: Optional[int] = None, name: Optional[str] = None
                    ) -> 'DemoModel':
        """A folder of ``tools/deployment/export_onnx.py``, run by onnxruntime. The export
        is one graph with the memory layers in it: no memory-off twin."""
        from ..deployment import ONNXPanopticPredictor, read_export
        if not osp.isdir(export_dir):
            raise FileNotFoundError(f'export folder {export_dir} does not exist')
        info = read_export(export_dir)
        if memory_root is not None and info.get('family') != 'maps':
            raise DemoError(f'--memory: {export_dir} is a {info.get("family")} export; it '
                            'reads no memory')
        predictor = ONNXPanopticPredictor(export_dir, memory_root=memory_root,
                                          num_threads=num_threads)
        unavailable = None
        if predictor.memory is not None:
            unavailable = ('memory off needs the PyTorch backend: an ONNX export has its '
                           'memory layers built in (export a config with '
                           'use_scene_memory=False and use_object_memory=False to compare)')
        return cls(name or osp.basename(osp.normpath(export_dir)), 'onnxruntime', predictor,
                   predictor.dataset_meta, predictor.cfg, memory=predictor.memory,
                   memory_off_unavailable=unavailable)

    # ------------------------------------------------------------------ inference
    def predict(self, img_path: str, memory_off: bool = False,
                score_thr: float = 0.3) -> DemoPrediction:
        """Run the image file ``img_path``; with ``memory_off`` (MAPS, PyTorch) also its
        memory-off twin. ``score_thr``: draw the boxes of thing detections above it."""
        image = read_rgb(img_path, 'uploaded image')
        prediction = self._predict_with(self._run, image, img_path, score_thr)
        prediction.retrievals = self._retrievals(prediction.sample)
        if memory_off and self._run_memory_off is not None:
            prediction.memory_off = self._predict_with(self._run_memory_off, image, img_path,
                                                       score_thr)
        return prediction

    def _predict_with(self, run: Callable, image: np.ndarray, img_path: str,
                      score_thr: float) -> DemoPrediction:
        start = time.perf_counter()
        sample = run(img_path)
        seconds = time.perf_counter() - start
        prediction = DemoPrediction(
            overlay=draw_panoptic(image, sample, self.dataset_meta, score_thr=score_thr),
            segments=segment_rows(sample, self.dataset_meta), seconds=seconds, sample=sample)
        return prediction

    def _retrievals(self, sample) -> List[dict]:
        retrieval = sample.metainfo.get('retrieval')
        if self.memory is None or retrieval is None:
            return []
        if self._bank_images is None:
            self._bank_images = BankImages(self.cfg, self.memory.root)
        objects_by_rank = {}
        object_bank = self.memory.root.object_bank
        if object_bank is not None and retrieval.object_image_ids is not None:
            for obj in retrieved_objects(object_bank, retrieval, 0,
                                         self.memory.retriever.max_objects):
                objects_by_rank.setdefault(obj['rank'], []).append(
                    self.bank_classes[obj['category_id']])
        rows = []
        for rank, (image_id, score) in enumerate(zip(retrieval.image_ids[0].tolist(),
                                                     retrieval.scores[0].tolist())):
            if image_id < 0:
                continue
            path = self._bank_images.path(image_id)
            image = read_rgb(path, 'memory image') if osp.isfile(path) else None
            rows.append(dict(rank=rank + 1, image_id=int(image_id), similarity=float(score),
                             objects=objects_by_rank.get(rank, []), image=image, file=path))
        return rows
