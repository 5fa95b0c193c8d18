"""Loads the MAPS memory banks for a run and attaches them to the model."""
import json
import os.path as osp
import warnings
from typing import Optional

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmdet.registry import HOOKS

from ...memory.bank import MemoryBankError
from ...memory.dataset_records import dataset_cfg_of
from ...memory.memory_root import MemoryRoot
from ...memory.retriever import MemoryRetriever
from ...memory.storage import sha256_file

# encoder fields that must agree between the bank and the model's query encoder
_ENCODER_IDENTITY = ('type', 'arch', 'weights_sha256', 'out_channels')


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


@HOOKS.register_module()
class MemoryHook(Hook):
    """Load the memory named in the config, check it fits the model, attach it.

    At ``before_run`` it loads ``memory_root`` (default ``cfg.memory.root``),
    verifies the files against their manifests, checks that the bank's key
    encoder and dimensions match what the model expects (``model.memory_spec()``),
    builds a :class:`MemoryRetriever` and hands it to ``model.attach_memory``.
    The leak guard is switched on automatically when the bank was built from the
    training annotation file. Before validation/testing it refuses a bank that
    contains the evaluated images. The bank checksums go into checkpoint meta;
    loading a checkpoint trained with another bank warns loudly.

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
    """

    priority = 'VERY_HIGH'

    def __init__(self, memory_root: Optional[str] = None, k: Optional[int] = None,
                 max_objects: Optional[int] = None, pad_objects_to_max: bool = False,
                 random_sampling: Optional[int] = None, exclude_self='auto',
                 verify: bool = True, use_gpu: bool = True,
                 index_overrides: Optional[dict] = None, allow_eval_overlap: bool = False,
                 seed: Optional[int] = None):
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
            for field in _ENCODER_IDENTITY:
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
            exclude_self = (train_ann is not None
                            and sha256_file(train_ann) == memory.source.get('ann_sha256'))
        self.memory = memory
        self.retriever = MemoryRetriever(
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

    def _check_eval_split(self, runner, split: str) -> None:
        if self.memory is None or self.allow_eval_overlap or split in self._checked_splits:
            return
        self._checked_splits.add(split)
        ann_file = _dataset_ann_file(runner.cfg, split)
        if ann_file is None:
            return
        if sha256_file(ann_file) == self.memory.source.get('ann_sha256'):
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

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.memory is not None:
            checkpoint.setdefault('meta', {})['memory'] = self.memory.signature()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        saved = (checkpoint.get('meta') or {}).get('memory')
        if self.memory is None or not saved:
            return
        current = self.memory.signature()
        if saved.get('manifest_sha256') != current['manifest_sha256']:
            message = (
                '\n' + '!' * 78 + '\nMEMORY MISMATCH: the checkpoint was trained with the memory '
                f'{saved.get("root")} (manifest sha256 {saved.get("manifest_sha256", "")[:12]}), '
                f'this run uses {current["root"]} (sha256 {current["manifest_sha256"][:12]}). '
                'Resuming/testing with a different memory changes what the model retrieves.\n'
                + '!' * 78)
            runner.logger.warning(message)
            warnings.warn(message)
