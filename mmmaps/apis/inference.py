"""Single-image inference for mmmaps models outside the Runner (demo, retrieval viewer).

mmdet's ``init_detector`` / ``inference_detector`` do the work; what mmmaps adds:

- the class names and palette come from the config's test dataset (an untrained or
  converted checkpoint carries none, and mmdet would fall back to COCO's 80 classes);
- a MAPS model gets its memory as a run does: :func:`~mmmaps.memory.build_external_memory`
  from the config's ``memory`` section, attached with ``model.attach_memory``, the
  checkpoint's recorded memory compared as ``MemoryHook`` does;
- annotation loading is dropped from the test pipeline (a lone image has none).
"""
import copy
import os.path as osp
import warnings
from typing import Optional, Sequence

import numpy as np
from mmengine.config import Config
from mmengine.logging import MMLogger

from ..memory.checkpoint_meta import check_checkpoint_memory
from ..memory.external_memory import build_external_memory
from .demo import DemoError

_ANNOTATION_LOADERS = ('LoadAnnotations', 'LoadPanopticAnnotations', 'LoadSemSegAnnotations')


def _short_type(cfg: dict) -> str:
    return str(cfg.get('type', '')).rpartition('.')[2]


def uses_memory(cfg: Config) -> bool:
    """Whether the config's model reads a MAPS memory (it has a MemoryHook)."""
    return any(_short_type(hook) == 'MemoryHook' for hook in cfg.get('custom_hooks') or [])


def dataset_meta_of(cfg: Config) -> dict:
    """``metainfo`` of the config's test dataset (classes, thing/stuff classes, palette)."""
    from mmdet.registry import DATASETS
    dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    dataset_cfg['lazy_init'] = True
    return dict(DATASETS.build(dataset_cfg).metainfo)


def init_panoptic_model(config: Config, checkpoint: str, device: str = 'cpu',
                        memory_root: Optional[str] = None, logger=None):
    """Build a model with mmdet's ``init_detector`` and load ``checkpoint``.

    The model's class counts must be those of the config's test dataset
    (:func:`~mmmaps.datasets.preflight.check_class_counts`) and the checkpoint's tensors must
    fit the model (:func:`~mmmaps.utils.checkpoint_fit.checkpoint_fit_check`), as in
    ``tools/test.py``. ``model.dataset_meta`` is the config's test dataset metainfo. A MAPS
    model gets the memory of ``memory.root`` (or ``memory_root``, a deliberate swap: the
    checkpoint's recorded memory must have the same encoders) as ``model.memory``; none
    when its head reads no memory (both switched off, or learned tokens).
    """
    from mmdet.apis import init_detector
    from mmengine.runner import load_checkpoint

    from ..datasets.preflight import check_class_counts
    from ..utils.checkpoint_fit import checkpoint_fit_check

    cfg = copy.deepcopy(config)
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint} does not exist')
    check_class_counts(cfg, 'test')
    with warnings.catch_warnings(record=True) as caught:
        # with checkpoint=None init_detector announces COCO classes (replaced below); the
        # weights are loaded here instead so that the checkpoint meta can be checked
        model = init_detector(cfg, None, device=device)
    for warning in caught:
        if 'COCO classes' not in str(warning.message):
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    with checkpoint_fit_check(model, checkpoint):
        ckpt = load_checkpoint(model, checkpoint, map_location='cpu',
                               logger=logger or 'current')
    meta = dataset_meta_of(cfg)
    saved = (ckpt.get('meta') or {}).get('dataset_meta') or {}
    saved_classes = saved.get('classes') or saved.get('CLASSES')
    if saved_classes is not None and tuple(saved_classes) != tuple(meta.get('classes', ())):
        warnings.warn(f'{checkpoint} was trained with the classes {tuple(saved_classes)}, the '
                      f'config names {tuple(meta.get("classes", ()))}; the config\'s are used')
    model.dataset_meta = meta
    if uses_memory(cfg) or hasattr(model, 'attach_memory'):
        if not hasattr(model, 'attach_memory'):
            raise TypeError(f'the config has a MemoryHook but its model '
                            f'{type(model).__name__} takes no memory')
        if not model.panoptic_head.needs_memory:
            # both memories switched off (Table 7) or learned tokens: the forward pass
            # retrieves nothing, so no index is loaded
            if memory_root is not None:
                raise DemoError(f'memory_root {memory_root}: the {type(model).__name__} of '
                                 'this config reads no memory (use_scene_memory and '
                                 'use_object_memory are off, or learned_memory is set)')
            return model
        memory = build_external_memory(cfg.memory, root=memory_root, device=device)
        model.attach_memory(memory)
        check_checkpoint_memory(memory, ckpt, memory_swap=memory_root is not None,
                                logger=logger or MMLogger.get_current_instance())
    return model


def pipeline_without_annotations(cfg: Config) -> list:
    """The config's test pipeline without its annotation loaders."""
    from mmdet.utils import get_test_pipeline_cfg
    return [step for step in copy.deepcopy(get_test_pipeline_cfg(cfg))
            if _short_type(step) not in _ANNOTATION_LOADERS]


def inference_panoptic(model, images, pipeline: Optional[Sequence[dict]] = None):
    """``mmdet.apis.inference_detector`` on image paths or arrays, annotations not loaded.

    A MAPS model's predictions carry ``metainfo['retrieval']``: the
    :class:`~mmmaps.memory.RetrievalResult` of that image (ids, scores; no values).
    """
    from mmcv.transforms import Compose
    from mmdet.apis import inference_detector

    batch = isinstance(images, (list, tuple))
    images = list(images) if batch else [images]
    steps = list(pipeline) if pipeline is not None else pipeline_without_annotations(
        model.cfg)
    if images and isinstance(images[0], np.ndarray):
        steps[0] = dict(steps[0], type='mmdet.LoadImageFromNDArray')
    results = inference_detector(model, images, test_pipeline=Compose(steps))
    return results if batch else results[0]
