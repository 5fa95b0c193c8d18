"""Single-image inference for mmmaps models outside the Runner (demo, retrieval viewer).

mmdet's ``init_detector`` / ``inference_detector`` do the work; what mmmaps adds:

- the class names and palette come from the config's test dataset (an untrained or
  converted checkpoint carries none, and mmdet would fall back to COCO's 80 classes);
- a MAPS model gets its memory the way a run does: :func:`load_memory` runs
  :class:`~mmmaps.engine.hooks.MemoryHook`'s own ``before_run`` on a stand-in for the
  Runner, so loading ``memory.root``, the manifest/sha256 checks, the model/bank fit
  check and the retriever settings are exactly those of ``tools/train.py``/``test.py``;
- annotation loading is dropped from the test pipeline (a lone image has none).
"""
import copy
import os.path as osp
import warnings
from typing import List, Optional, Sequence

import numpy as np
from mmengine.config import Config
from mmengine.logging import MMLogger

from ..engine.hooks.memory_hook import MemoryHook
from ..memory.retriever import RetrievalResult

_ANNOTATION_LOADERS = ('LoadAnnotations', 'LoadPanopticAnnotations', 'LoadSemSegAnnotations')


def _short_type(cfg: dict) -> str:
    return str(cfg.get('type', '')).rpartition('.')[2]


def memory_hook_cfg(cfg: Config) -> Optional[dict]:
    """The ``MemoryHook`` entry of ``cfg.custom_hooks`` (without ``type``), or None."""
    for hook in cfg.get('custom_hooks') or []:
        if _short_type(hook) == 'MemoryHook':
            hook = copy.deepcopy(dict(hook))
            hook.pop('type')
            hook.pop('priority', None)
            return hook
    return None


def uses_memory(cfg: Config) -> bool:
    """Whether the config's model reads a MAPS memory (it has a MemoryHook)."""
    return memory_hook_cfg(cfg) is not None


class _RunnerView:
    """What ``MemoryHook.before_run`` reads from a Runner: model, cfg and logger."""

    def __init__(self, model, cfg: Config, logger):
        self.model = model
        self.cfg = cfg
        self.logger = logger


class KeyEncoderModel:
    """Stands in for a MAPS model when only the memory is wanted (retrieval viewer).

    ``MemoryHook`` checks the bank's key encoder against :meth:`memory_spec` (type,
    arch, weights fingerprint, dim) and hands the retriever to :meth:`attach_memory`.
    """

    def __init__(self, key_encoder):
        self.key_encoder = key_encoder
        self.retriever = None
        self.memory = None

    def memory_spec(self) -> dict:
        desc = self.key_encoder.describe()
        return dict(key_encoder=desc, key_dim=desc['out_channels'])

    def attach_memory(self, retriever, memory=None, eval_query_cache=None) -> None:
        self.retriever, self.memory = retriever, memory


def load_memory(cfg: Config, model, memory_root: Optional[str] = None, logger=None,
                **hook_args) -> MemoryHook:
    """Load the config's memory, check it fits ``model`` and attach it, without a Runner.

    The config's own ``MemoryHook`` entry (``custom_hooks``) gives the hook's arguments;
    ``memory_root`` and ``hook_args`` override them (e.g. ``exclude_self=False`` for an
    image that is not in any dataset, ``use_gpu=False``).

    Returns:
        MemoryHook: the hook after ``before_run``; ``hook.memory`` is the
        :class:`~mmmaps.memory.MemoryRoot`, ``hook.retriever`` the retriever.
    """
    args = memory_hook_cfg(cfg) or {}
    args.update(hook_args)
    if memory_root is not None:
        args['memory_root'] = memory_root
    hook = MemoryHook(**args)
    hook.before_run(_RunnerView(model, cfg, logger or MMLogger.get_current_instance()))
    return hook


class RecordingRetriever:
    """Wraps a retriever and keeps every :class:`RetrievalResult` it returned, so a caller
    sees exactly what the model retrieved (same keys, k and object cap)."""

    def __init__(self, retriever):
        self.retriever = retriever
        self.results: List[RetrievalResult] = []

    def query(self, *args, **kwargs) -> RetrievalResult:
        result = self.retriever.query(*args, **kwargs)
        self.results.append(result)
        return result

    def __getattr__(self, name):
        return getattr(self.retriever, name)


def dataset_meta_of(cfg: Config) -> dict:
    """``metainfo`` of the config's test dataset (classes, thing/stuff classes, palette)."""
    from mmdet.registry import DATASETS
    dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    dataset_cfg['lazy_init'] = True
    return dict(DATASETS.build(dataset_cfg).metainfo)


def init_panoptic_model(config: Config, checkpoint: str, device: str = 'cpu',
                        memory_root: Optional[str] = None, logger=None, **memory_args):
    """Build a model with mmdet's ``init_detector`` and load ``checkpoint``.

    ``model.dataset_meta`` is the config's test dataset metainfo. For a MAPS config the
    memory is loaded and attached (:func:`load_memory`, leak guard off: the demo image
    is not a dataset image); ``model.memory_hook`` is the hook, or None.
    """
    from mmdet.apis import init_detector
    from mmengine.runner import load_checkpoint

    cfg = copy.deepcopy(config)
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint} does not exist')
    with warnings.catch_warnings(record=True) as caught:
        # with checkpoint=None init_detector announces COCO classes (replaced below); the
        # weights are loaded here instead so that the checkpoint meta can be checked
        model = init_detector(cfg, None, device=device)
    for warning in caught:
        if 'COCO classes' not in str(warning.message):
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    ckpt = load_checkpoint(model, checkpoint, map_location='cpu', logger=logger or 'current')
    meta = dataset_meta_of(cfg)
    saved = (ckpt.get('meta') or {}).get('dataset_meta') or {}
    saved_classes = saved.get('classes') or saved.get('CLASSES')
    if saved_classes is not None and tuple(saved_classes) != tuple(meta.get('classes', ())):
        warnings.warn(f'{checkpoint} was trained with the classes {tuple(saved_classes)}, the '
                      f'config names {tuple(meta.get("classes", ()))}; the config\'s are used')
    model.dataset_meta = meta
    model.memory_hook = None
    if uses_memory(cfg) or hasattr(model, 'attach_memory'):
        if not hasattr(model, 'attach_memory'):
            raise TypeError(f'the config has a MemoryHook but its model '
                            f'{type(model).__name__} takes no memory')
        memory_args.setdefault('exclude_self', False)
        memory_args.setdefault('use_gpu', str(device).startswith('cuda'))
        hook = load_memory(cfg, model, memory_root=memory_root, logger=logger, **memory_args)
        view = _RunnerView(model, cfg, logger or MMLogger.get_current_instance())
        hook.after_load_checkpoint(view, ckpt)  # warns when trained with another memory
        model.memory_hook = hook
    return model


def pipeline_without_annotations(cfg: Config) -> list:
    """The config's test pipeline without its annotation loaders."""
    from mmdet.utils import get_test_pipeline_cfg
    return [step for step in copy.deepcopy(get_test_pipeline_cfg(cfg))
            if _short_type(step) not in _ANNOTATION_LOADERS]


def inference_panoptic(model, images, pipeline: Optional[Sequence[dict]] = None):
    """``mmdet.apis.inference_detector`` on image paths or arrays, annotations not loaded.

    For a model with an attached memory, each returned sample also carries
    ``metainfo['retrieval']``: the :class:`RetrievalResult` the model used for that image
    (a batch of one).
    """
    from mmcv.transforms import Compose
    from mmdet.apis import inference_detector

    batch = isinstance(images, (list, tuple))
    images = list(images) if batch else [images]
    steps = list(pipeline) if pipeline is not None else pipeline_without_annotations(
        model.cfg)
    if images and isinstance(images[0], np.ndarray):
        steps[0] = dict(steps[0], type='mmdet.LoadImageFromNDArray')
    retriever = getattr(model, 'retriever', None)
    recorder = None
    if retriever is not None:
        memory = getattr(model, 'memory', None)
        extra = (model.eval_query_cache,) if hasattr(model, 'eval_query_cache') else ()
        recorder = RecordingRetriever(retriever)
        model.attach_memory(recorder, memory, *extra)
    try:
        results = inference_detector(model, images, test_pipeline=Compose(steps))
    finally:
        if recorder is not None:
            model.attach_memory(retriever, memory, *extra)
    if recorder is not None and recorder.results:
        if len(recorder.results) != len(results):
            raise RuntimeError(f'{len(recorder.results)} retrievals for {len(results)} images')
        for sample, result in zip(results, recorder.results):
            sample.set_metainfo(dict(retrieval=result))
    return results if batch else results[0]
