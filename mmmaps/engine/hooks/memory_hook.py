"""Loads the MAPS memory banks for a run, attaches them to the model, logs retrieval."""
import inspect
import json
import os.path as osp
import warnings
from typing import Dict, List, Optional

import torch

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmdet.registry import HOOKS

from ...memory.bank import MemoryBankError
from ...memory.dataset_records import dataset_cfg_of
from ...memory.memory_root import ENCODER_IDENTITY, MemoryRoot
from ...memory.retriever import MemoryRetriever, RetrievalResult
from ...memory.storage import sha256_file

_QUERY_SIGNATURE = inspect.signature(MemoryRetriever.query)
STAT_NAMES = ('scene_sim', 'scene_sim_k', 'object_slots')


def _dataset_ann_file(cfg, split: str) -> Optional[str]:
    try:
        dataset = dataset_cfg_of(cfg, split)
    except (KeyError, ValueError, TypeError):
        return None
    ann_file = dataset.get('ann_file')
    if not ann_file:
        return None
    if not osp.isabs(ann_file) and dataset.get('data_root'):
        ann_file = osp.join(dataset['data_root'], ann_file)
    return ann_file if osp.isfile(ann_file) else None


class _RetrievalStats:
    """Running sums of what queries retrieved, per query image."""

    def __init__(self):
        self.sums = dict.fromkeys(STAT_NAMES, 0.0)
        self.counts = dict.fromkeys(STAT_NAMES, 0)

    def add(self, result: RetrievalResult, max_objects: int) -> None:
        found = ~result.scene_mask.detach().cpu()
        scores = result.scores.detach().float().cpu()
        num = found.sum(1)
        hit = num > 0
        self.sums['scene_sim'] += float(scores[hit, 0].sum())
        self.sums['scene_sim_k'] += float(((scores * found).sum(1)[hit] / num[hit]).sum())
        self.counts['scene_sim'] += int(hit.sum())
        self.counts['scene_sim_k'] += int(hit.sum())
        if result.object_mask is not None and max_objects > 0:
            used = (~result.object_mask.detach().cpu()).sum(1).float() / max_objects
            self.sums['object_slots'] += float(used.sum())
            self.counts['object_slots'] += len(used)

    def pop(self) -> Dict[str, float]:
        means = {k: self.sums[k] / self.counts[k] for k in STAT_NAMES if self.counts[k]}
        self.__init__()
        return means


class StatsMemoryRetriever(MemoryRetriever):
    """A :class:`MemoryRetriever` that also accumulates retrieval statistics.

    What it returns is exactly what :class:`MemoryRetriever` returns. Per query
    image it records the inner product (= cosine similarity) of the rank-1
    retrieved scene (``scene_sim``), the mean over the retrieved scenes
    (``scene_sim_k``) and the fraction of the ``max_objects`` object slots that
    hold an object rather than padding (``object_slots``), separately for
    training and evaluation queries; :meth:`pop_stats` returns the means since
    the last call.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stats = {True: _RetrievalStats(), False: _RetrievalStats()}

    def query(self, keys, *args, **kwargs) -> RetrievalResult:
        result = super().query(keys, *args, **kwargs)
        call = _QUERY_SIGNATURE.bind(self, keys, *args, **kwargs)
        call.apply_defaults()
        with torch.no_grad():
            self._stats[bool(call.arguments['training'])].add(result, self.max_objects)
        return result

    def pop_stats(self, training: bool) -> Dict[str, float]:
        return self._stats[bool(training)].pop()


def _identity_problems(saved: dict, current: dict) -> List[str]:
    """Encoder identities and dims recorded in a checkpoint that the memory contradicts
    (fields the checkpoint lacks, e.g. from older versions, are not compared)."""
    problems = []
    for field in ('key_encoder', 'dense_encoder'):
        a, b = saved.get(field), current.get(field)
        if a is None or b is None or a == b:
            continue
        fields = [f for f in ENCODER_IDENTITY if a.get(f) != b.get(f)]
        problems.append(f'{field.replace("_", " ")} ' + ', '.join(
            f'{f}: trained {a.get(f)!r}, memory {b.get(f)!r}' for f in fields))
    for field in ('key_dim', 'scene_dim', 'object_dim'):
        a, b = saved.get(field), current.get(field)
        if a is not None and b is not None and a != b:
            problems.append(f'{field.replace("_", " ")}: trained {a}, memory {b}')
    return problems


def _describe(sig: dict) -> str:
    return (f'{sig.get("root")} ({sig.get("num_images", "?")} images, manifest sha256 '
            f'{str(sig.get("manifest_sha256", ""))[:12]})')


@HOOKS.register_module()
class MemoryHook(Hook):
    """Load the memory named in the config, check it fits the model, attach it.

    At ``before_run`` it loads ``memory_root`` (default ``cfg.memory.root``),
    verifies the files against their manifests, checks that the bank's key
    encoder and dimensions match what the model expects (``model.memory_spec()``),
    builds a :class:`MemoryRetriever` and hands it to ``model.attach_memory``.
    The leak guard is switched on automatically when the bank holds the images
    of the training annotation file. Before validation/testing it refuses a bank
    that contains the evaluated images. The bank checksums, encoder identities
    and dimensions go into checkpoint meta; loading a checkpoint trained with
    another bank warns loudly, unless ``memory_swap`` says the swap is deliberate
    (``tools/test.py --memory``): then it logs which memory replaces which at INFO,
    and an incompatible memory (other encoders or dimensions than the checkpoint
    was trained with) is an error.

    Retrieval statistics (see :class:`StatsMemoryRetriever`) are written every
    training iteration to the message hub as ``train/retrieval/scene_sim``,
    ``train/retrieval/scene_sim_k`` and ``train/retrieval/object_slots``, so they
    appear (averaged over the log processor's window, like the losses) in the
    log line and in every visualizer backend (TensorBoard, ...); after each
    validation/test epoch their means over the evaluated images are logged.

    Args:
        memory_root (str, optional): Memory directory (tools/build_memory.py).
        k (int, optional): Retrievals per query; default ``memory.retrieval.k`` or 5.
        max_objects (int, optional): Object slot cap; default from the config.
        pad_objects_to_max (bool): Fixed K_obj = max_objects.
        random_sampling (int, optional): k' for sampling k of the top-k' in training.
        exclude_self (bool | 'auto'): Leak guard; 'auto' = on when the bank
            was built from the training annotation file.
        verify (bool): Check every bank file's sha256 on load.
        use_gpu (bool): Put Flat/IVF indices on the GPU when faiss-gpu is installed.
        index_overrides (dict, optional): e.g. ``dict(ef_search=256)``.
        allow_eval_overlap (bool): Permit evaluating on images that are in the bank.
        seed (int, optional): Seed of the random-sampling generator.
        memory_swap (bool): The memory deliberately replaces the one the loaded
            checkpoint was trained with (set by ``tools/test.py --memory``).
        log_stats (bool): Log the retrieval statistics.
    """

    priority = 'VERY_HIGH'

    def __init__(self, memory_root: Optional[str] = None, k: Optional[int] = None,
                 max_objects: Optional[int] = None, pad_objects_to_max: bool = False,
                 random_sampling: Optional[int] = None, exclude_self='auto',
                 verify: bool = True, use_gpu: bool = True,
                 index_overrides: Optional[dict] = None, allow_eval_overlap: bool = False,
                 seed: Optional[int] = None, memory_swap: bool = False,
                 log_stats: bool = True):
        self.memory_root = memory_root
        self.k = k
        self.max_objects = max_objects
        self.pad_objects_to_max = pad_objects_to_max
        self.random_sampling = random_sampling
        self.exclude_self = exclude_self
        self.verify = verify
        self.use_gpu = use_gpu
        self.index_overrides = index_overrides
        self.allow_eval_overlap = allow_eval_overlap
        self.seed = seed
        self.memory_swap = memory_swap
        self.log_stats = log_stats
        self.memory: Optional[MemoryRoot] = None
        self.retriever: Optional[MemoryRetriever] = None
        self._checked_splits = set()

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _model(runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def _setting(self, runner, name, default):
        value = getattr(self, name)
        if value is not None:
            return value
        retrieval = (runner.cfg.get('memory') or {}).get('retrieval') or {}
        return retrieval.get(name, default)

    def _validate(self, model, memory: MemoryRoot) -> None:
        if not hasattr(model, 'memory_spec'):
            return
        spec = model.memory_spec()
        problems = []
        bank_key = memory.key_encoder
        model_key = spec.get('key_encoder')
        if model_key is not None:
            for field in ENCODER_IDENTITY:
                if field in model_key and model_key.get(field) != bank_key.get(field):
                    problems.append(f'key encoder {field}: bank {bank_key.get(field)!r}, '
                                    f'model {model_key.get(field)!r}')
        if spec.get('key_dim') not in (None, memory.scene_bank.key_dim):
            problems.append(f'key dim: bank {memory.scene_bank.key_dim}, model '
                            f'{spec["key_dim"]}')
        if spec.get('scene_dim') not in (None, memory.scene_bank.value_dim):
            problems.append(f'scene value dim: bank {memory.scene_bank.value_dim}, model '
                            f'{spec["scene_dim"]}')
        if spec.get('object_dim') is not None:
            if memory.object_bank is None:
                problems.append('the model uses object memory but the memory has no object '
                                'bank (memory.dense_encoder was None when it was built)')
            elif spec['object_dim'] != memory.object_bank.value_dim:
                problems.append(f'object value dim: bank {memory.object_bank.value_dim}, model '
                                f'{spec["object_dim"]}')
        if problems:
            raise MemoryBankError(
                f'the memory at {memory.root} (manifest {osp.join(memory.root, "manifest.json")}) '
                'does not fit the model: ' + '; '.join(problems) +
                '. Rebuild it with tools/build_memory.py using this config.')

    # ------------------------------------------------------------------ hooks
    def before_run(self, runner) -> None:
        model = self._model(runner)
        if not hasattr(model, 'attach_memory'):
            raise TypeError(f'MemoryHook needs a memory-augmented model (with attach_memory()); '
                            f'{type(model).__name__} has none. Remove the hook or use a MAPS '
                            'config.')
        root = self.memory_root or (runner.cfg.get('memory') or {}).get('root')
        if not root:
            raise KeyError('MemoryHook: set memory_root or memory.root in the config')
        memory = MemoryRoot(root, verify=self.verify, use_gpu=self.use_gpu,
                            index_overrides=self.index_overrides)
        if memory.scene_bank is None:
            raise MemoryBankError(f'{memory.root} holds only a query-embedding cache, no memory '
                                  'banks; build the banks with tools/build_memory.py CONFIG')
        self._validate(model, memory)
        exclude_self = self.exclude_self
        train_ann = _dataset_ann_file(runner.cfg, 'train')
        if exclude_self == 'auto':
            exclude_self = (train_ann is not None and sha256_file(train_ann) in
                            {s.get('ann_sha256') for s in memory.sources})
        self.memory = memory
        self.retriever = StatsMemoryRetriever(
            memory.scene_bank, memory.object_bank,
            k=self._setting(runner, 'k', 5),
            max_objects=self._setting(runner, 'max_objects', None),
            pad_objects_to_max=self.pad_objects_to_max,
            random_sampling=self._setting(runner, 'random_sampling', None),
            exclude_self=bool(exclude_self), seed=self.seed)
        model.attach_memory(self.retriever, memory)
        runner.logger.info(memory.summary())
        runner.logger.info(f'memory retrieval: k={self.retriever.k}, max_objects='
                           f'{self.retriever.max_objects}, random_sampling='
                           f'{self.retriever.random_sampling}, leak guard (exclude the query '
                           f'image) {"on" if self.retriever.exclude_self else "off"}')
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

    def _check_eval_split(self, runner, split: str) -> None:
        if self.memory is None or self.allow_eval_overlap or split in self._checked_splits:
            return
        self._checked_splits.add(split)
        ann_file = _dataset_ann_file(runner.cfg, split)
        if ann_file is None:
            return
        if sha256_file(ann_file) in {s.get('ann_sha256') for s in self.memory.sources}:
            raise MemoryBankError(
                f'the memory at {self.memory.root} was built from {ann_file}, the very '
                f'annotation file being evaluated ({split}): every image would retrieve itself. '
                'Build the memory from the training split, or set '
                'MemoryHook(allow_eval_overlap=True) if this is intended.')
        with open(ann_file) as f:
            images = json.load(f).get('images', [])
        bank = self.memory.scene_bank
        in_bank = set(zip(bank.image_ids.tolist(), bank.file_names))
        overlap = [(img['id'], img['file_name']) for img in images
                   if (int(img['id']), img['file_name']) in in_bank]
        if overlap:
            raise MemoryBankError(
                f'{len(overlap)} images of {ann_file} are in the memory bank {bank.path} '
                f'(e.g. {overlap[:3]}): evaluation would leak. Set '
                'MemoryHook(allow_eval_overlap=True) if this is intended.')

    def before_val(self, runner) -> None:
        self._check_eval_split(runner, 'val')

    def before_test(self, runner) -> None:
        self._check_eval_split(runner, 'test')

    # ------------------------------------------------------------------ statistics
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self.log_stats or self.retriever is None:
            return
        for name, value in self.retriever.pop_stats(training=True).items():
            runner.message_hub.update_scalar(f'train/retrieval/{name}', value)

    def before_val_epoch(self, runner) -> None:
        if self.retriever is not None:
            self.retriever.pop_stats(training=False)

    def before_test_epoch(self, runner) -> None:
        self.before_val_epoch(runner)

    def _log_eval_stats(self, runner, mode: str) -> None:
        if not self.log_stats or self.retriever is None:
            return
        means = self.retriever.pop_stats(training=False)
        if means:
            runner.logger.info(f'retrieval ({mode}) from {self.memory.root}: ' + ', '.join(
                f'retrieval/{k}={v:.4f}' for k, v in means.items()))

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._log_eval_stats(runner, 'val')

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._log_eval_stats(runner, 'test')

    # ------------------------------------------------------------------ checkpoints
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.memory is not None:
            checkpoint.setdefault('meta', {})['memory'] = self.memory.signature()

    def _relation(self, saved: dict) -> str:
        """How this memory descends from the checkpoint's (via appends), or ''."""
        lineage = self.memory.lineage
        for i, entry in enumerate(lineage):
            if entry.get('parent', {}).get('manifest_sha256') == saved.get('manifest_sha256'):
                added = [e.get('appended', {}) for e in lineage[i:]]
                return (' (it is that memory + ' + ' + '.join(
                    f'{a.get("num_images")} images of {a.get("ann_file")}' for a in added) + ')')
        return ''

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        saved = (checkpoint.get('meta') or {}).get('memory')
        if self.memory is None:
            return
        current = self.memory.signature()
        if not saved:
            if self.memory_swap:
                runner.logger.info(f'memory swap: evaluating with {_describe(current)}; the '
                                   'checkpoint does not record the memory it was trained with')
            return
        if saved.get('manifest_sha256') == current['manifest_sha256']:
            if self.memory_swap:
                runner.logger.info(f'memory swap: {_describe(current)} is the memory the '
                                   'checkpoint was trained with (nothing swapped)')
            return
        problems = _identity_problems(saved, current)
        if self.memory_swap:
            if problems:
                raise MemoryBankError(
                    f'memory swap refused: the checkpoint was trained with the memory '
                    f'{_describe(saved)}, and {_describe(current)} differs in ' +
                    '; '.join(problems) + '. The model cannot read vectors of other encoders; '
                    'build the new memory with the memory section of the training config '
                    '(tools/build_memory.py CONFIG [--append ...]).')
            checked = ('key/dense encoders and dimensions match' if 'key_encoder' in saved else
                       'the checkpoint records no encoders to compare (saved by an older '
                       'mmmaps); the memory was checked against the model only')
            runner.logger.info(
                f'memory swap: the memory {_describe(current)} replaces the training memory '
                f'{_describe(saved)} recorded in the checkpoint{self._relation(saved)}; '
                + checked)
            return
        message = (
            '\n' + '!' * 78 + '\nMEMORY MISMATCH: the checkpoint was trained with the memory '
            f'{saved.get("root")} (manifest sha256 {saved.get("manifest_sha256", "")[:12]}), '
            f'this run uses {current["root"]} (sha256 {current["manifest_sha256"][:12]}). '
            'Resuming/testing with a different memory changes what the model retrieves'
            + (' and it is INCOMPATIBLE: ' + '; '.join(problems) if problems else '') +
            '. To evaluate with another memory on purpose use tools/test.py --memory DIR.\n'
            + '!' * 78)
        runner.logger.warning(message)
        warnings.warn(message)
