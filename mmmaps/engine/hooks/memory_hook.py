"""Attaches the MAPS memory to a run, records it in checkpoints, logs what it retrieved."""
from typing import Dict, List, Optional

import torch
from mmengine.dist import all_reduce, get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmdet.registry import HOOKS

from ...memory.checkpoint_meta import check_checkpoint_memory
from ...memory.external_memory import ExternalMemory, build_external_memory
from ...memory.retriever import NEAR_DUPLICATE_SIMILARITY

STAT_NAMES = ('scene_sim', 'scene_sim_k', 'object_slots', 'key_cache_hits')


def dataset_image_paths(dataset) -> List[str]:
    """The distinct image files of a built dataset, whatever wraps it (subsets,
    ``ConcatDataset``, ``RepeatDataset``, ...): what its samples' ``img_path`` will be."""
    paths = dict.fromkeys(dataset.get_data_info(i)['img_path'] for i in range(len(dataset)))
    return list(paths)


@HOOKS.register_module()
class MemoryHook(Hook):
    """Give a MAPS run its memory: a thin adapter between the Runner and
    :func:`~mmmaps.memory.build_external_memory`, which owns every retrieval setting.

    - ``before_run``: builds the memory from ``cfg.memory`` (the run's seed and rank seed
      the k' sampling; faiss-gpu indices on this rank's GPU; the key encoder is the
      model's ``memory_key_encoder()`` when it has one, e.g. an exported model's ONNX
      encoder), attaches it to the model, logs it.
    - ``before_train``: says how many training images (by content, whatever dataset
      wrapper or annotation file brought them) are in the memory; the memory's training
      policy keeps each of them from retrieving itself.
    - ``before_val``/``before_test``: refuses a dataset whose images are in the memory.
    - training statistics come with the losses (``retrieval/...``); evaluation statistics
      are averaged from the predictions' ``metainfo['retrieval']`` and logged per epoch.
    - at evaluation, an image that retrieves a memory image with similarity at or above
      :data:`~mmmaps.memory.retriever.NEAR_DUPLICATE_SIMILARITY` (a near-duplicate of it is
      in the memory: re-encoded or resized copies have other file contents, which the leak
      check of ``before_val``/``before_test`` cannot see) is a WARNING: the first one per
      run names the image, each evaluation ends with their count.
    - checkpoints record the memory (meta ``memory``); loading one trained with another
      memory warns loudly, unless ``memory_swap`` (``tools/test.py --memory``); one trained
      with other encoders or dimensions is an error, unless ``allow_incompatible_memory``.

    Args:
        memory_swap (bool): The memory deliberately replaces the one the loaded checkpoint
            was trained with (set by ``tools/test.py --memory``).
        log_stats (bool): Log the retrieval statistics.
        allow_incompatible_memory (bool): Run (with a loud warning) although the memory was
            built with other encoders or dimensions than the loaded checkpoint's (set by
            ``tools/test.py --allow-incompatible-memory``); default: refuse.
    """

    priority = 'VERY_HIGH'

    def __init__(self, memory_swap: bool = False, log_stats: bool = True,
                 allow_incompatible_memory: bool = False):
        self.memory_swap = memory_swap
        self.allow_incompatible_memory = allow_incompatible_memory
        self.log_stats = log_stats
        self.memory: Optional[ExternalMemory] = None
        self._eval_stats: Dict[str, List[float]] = {}
        self._near_duplicates = [0, 0]  # images that retrieved a near-duplicate, images
        self._warned_near_duplicate = False

    @staticmethod
    def _model(runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_run(self, runner) -> None:
        model = self._model(runner)
        if not hasattr(model, 'attach_memory'):
            raise TypeError(f'MemoryHook needs a memory-augmented model (with attach_memory()); '
                            f'{type(model).__name__} has none. Remove the hook or use a MAPS '
                            'config.')
        if 'memory' not in runner.cfg:
            raise KeyError('MemoryHook: the config has no `memory` section')
        # an exported model brings its own (ONNX) key encoder; others build memory.key_encoder
        key_encoder = (model.memory_key_encoder()
                       if hasattr(model, 'memory_key_encoder') else None)
        self.memory = build_external_memory(runner.cfg.memory, seed=runner.seed,
                                            rank=get_rank(), key_encoder=key_encoder)
        model.attach_memory(self.memory)
        runner.logger.info(self.memory.summary())
        if hasattr(model, 'exported_checkpoint_meta'):
            # an exported model loads no checkpoint: compare with the exported one's meta
            self.after_load_checkpoint(runner, dict(meta=model.exported_checkpoint_meta))
        if self.log_stats:
            self._smooth_stats_in_log(runner)

    @staticmethod
    def _smooth_stats_in_log(runner) -> None:
        """Average the statistics over the log window, as the losses are (the log
        processor shows the latest value of other scalars)."""
        processor = getattr(runner, 'log_processor', None)
        if processor is None or not isinstance(getattr(processor, 'window_size', None), int):
            return
        taken = {c.get('log_name', c.get('data_src')) for c in processor.custom_cfg}
        for name in STAT_NAMES:
            if f'retrieval/{name}' not in taken:
                processor.custom_cfg.append(dict(data_src=f'retrieval/{name}',
                                                 method_name='mean',
                                                 window_size=processor.window_size))

    def before_train(self, runner) -> None:
        if get_rank() != 0:  # one rank reads (and caches) the identities of the whole set
            return
        paths = dataset_image_paths(runner.train_dataloader.dataset)
        inside = sum(self.memory.in_memory(paths))
        runner.logger.info(
            f'leak guard: {inside} of the {len(paths)} training images are in the memory '
            f'{self.memory.root.root} (of {self.memory.root.source.get("ann_file")}; compared '
            'by file content); in training a query never retrieves its own picture; query '
            f'keys: {self.memory.query_key_source}')

    def _check_eval(self, runner, split: str) -> None:
        loader = getattr(runner, f'{split}_dataloader')
        self.memory.check_evaluation(dataset_image_paths(loader.dataset),
                                     f'the {split} dataset')

    def before_val(self, runner) -> None:
        self._check_eval(runner, 'val')

    def before_test(self, runner) -> None:
        self._check_eval(runner, 'test')

    # ------------------------------------------------------------------ statistics
    def _collect(self, runner, outputs) -> None:
        for sample in outputs or []:
            if 'retrieval' in sample:
                for name, value in sample.retrieval.statistics(
                        self.memory.retriever.max_objects).items():
                    self._eval_stats.setdefault(name, []).append(value)
                self._check_near_duplicate(runner, sample)

    def _check_near_duplicate(self, runner, sample) -> None:
        retrieval = sample.retrieval
        near = retrieval.near_duplicates()[0]
        self._near_duplicates[1] += 1
        if not near.any():
            return
        self._near_duplicates[0] += 1
        if self._warned_near_duplicate:
            return
        self._warned_near_duplicate = True
        slot = int(near.nonzero()[0])
        runner.logger.warning(
            f'near-duplicate retrieval: {sample.metainfo.get("img_path")} retrieved memory '
            f'image {int(retrieval.image_ids[0, slot])} with scene similarity '
            f'{float(retrieval.scores[0, slot]):.4f} >= {NEAR_DUPLICATE_SIMILARITY} (the memory '
            f'{self.memory.root.root} probably holds a re-encoded or resized copy of this '
            'evaluation image: a leak that file contents do not show). Check with '
            'tools/analysis/audit_memory.py CONFIG --split val|test; the count follows at the '
            'end of the evaluation.')

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._collect(runner, outputs)

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._collect(runner, outputs)

    def _log_eval_stats(self, runner, mode: str) -> None:
        stats, self._eval_stats = self._eval_stats, {}
        near = torch.tensor(self._near_duplicates, dtype=torch.float64)
        self._near_duplicates = [0, 0]
        all_reduce(near)
        found, images = (int(v) for v in near.tolist())
        if found:
            runner.logger.warning(
                f'near-duplicate retrievals ({mode}): {found} of the {images} evaluated images '
                f'retrieved a memory image with scene similarity >= '
                f'{NEAR_DUPLICATE_SIMILARITY} from {self.memory.root.root}: the metrics of '
                'this evaluation are probably inflated by near-duplicates of its images in the '
                'memory (tools/analysis/audit_memory.py CONFIG --split val|test lists them)')
        if not self.log_stats:
            return
        # every rank evaluated its share of the images: sum over ranks before averaging
        totals = torch.tensor([[sum(stats.get(k, [])), len(stats.get(k, []))]
                               for k in STAT_NAMES], dtype=torch.float64)
        all_reduce(totals)
        means = {k: s / n for k, (s, n) in zip(STAT_NAMES, totals.tolist()) if n}
        if means:
            runner.logger.info(f'retrieval ({mode}) from {self.memory.root.root}: ' + ', '.join(
                f'retrieval/{k}={v:.4f}' for k, v in means.items()))

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._log_eval_stats(runner, 'val')

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._log_eval_stats(runner, 'test')

    # ------------------------------------------------------------------ checkpoints
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.memory is not None:
            checkpoint.setdefault('meta', {})['memory'] = self.memory.signature()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.memory is not None:
            check_checkpoint_memory(self.memory, checkpoint, self.memory_swap, runner.logger,
                                    self.allow_incompatible_memory)
