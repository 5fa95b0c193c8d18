"""MemoryHook: loading, validation against the model, leak guards, checkpoint meta."""
import logging
import os.path as osp
import shutil
from types import SimpleNamespace

import pytest
import torch
from mmengine.model import BaseModel

from mmdet.registry import HOOKS

from mmmaps.memory import MemoryBankError, MemoryRoot

from ..conftest import MEMORY_CFG, load_config_with_root


class MemoryModel(BaseModel):
    """The minimal memory-augmented model protocol the hook relies on."""

    def __init__(self, spec=None):
        super().__init__()
        self.spec = spec or {}
        self.retriever = None
        self.layer = torch.nn.Linear(2, 2)

    def memory_spec(self):
        return self.spec

    def attach_memory(self, retriever, memory):
        self.retriever = retriever
        self.memory = memory

    def forward(self, *args, **kwargs):
        raise NotImplementedError


def make_runner(cfg, model):
    return SimpleNamespace(cfg=cfg, model=model, logger=logging.getLogger('test_memory_hook'))


@pytest.fixture
def cfg(synthetic_root, synthetic_memory):
    return load_config_with_root(MEMORY_CFG, synthetic_root, {'memory.root': synthetic_memory})


def test_hook_attaches_memory_with_leak_guard(cfg, synthetic_memory):
    memory = MemoryRoot(synthetic_memory)
    spec = dict(key_encoder=memory.key_encoder, key_dim=memory.scene_bank.key_dim,
                scene_dim=memory.scene_bank.value_dim, object_dim=memory.object_bank.value_dim)
    model = MemoryModel(spec)
    hook = HOOKS.build(dict(type='MemoryHook'))
    hook.before_run(make_runner(cfg, model))
    retriever = model.retriever
    assert retriever is not None and retriever.k == cfg.memory.retrieval.k
    assert retriever.max_objects == cfg.memory.retrieval.max_objects
    assert retriever.exclude_self  # the bank was built from the training annotations
    keys = torch.from_numpy(memory.scene_bank.keys[:3].copy())
    ids = memory.scene_bank.image_ids[:3]
    res = retriever.query(keys, image_ids=ids, training=True)
    assert not (res.image_ids == torch.from_numpy(ids)[:, None]).any()
    assert res.object_values.shape[-1] == memory.object_bank.value_dim
    hook.before_val(make_runner(cfg, model))  # val images are not in the bank


def test_hook_rejects_bank_that_does_not_fit(cfg, synthetic_memory):
    memory = MemoryRoot(synthetic_memory)
    wrong_dim = MemoryModel(dict(object_dim=memory.object_bank.value_dim + 1))
    with pytest.raises(MemoryBankError, match='object value dim.*manifest.json|manifest.json'):
        HOOKS.build(dict(type='MemoryHook')).before_run(make_runner(cfg, wrong_dim))
    other_encoder = dict(memory.key_encoder, weights_sha256='0' * 64)
    with pytest.raises(MemoryBankError, match='weights_sha256'):
        HOOKS.build(dict(type='MemoryHook')).before_run(
            make_runner(cfg, MemoryModel(dict(key_encoder=other_encoder))))
    with pytest.raises(TypeError, match='attach_memory'):
        HOOKS.build(dict(type='MemoryHook')).before_run(
            make_runner(cfg, torch.nn.Linear(1, 1)))


def test_hook_fails_on_corrupt_bank_naming_the_file(cfg, synthetic_memory, tmp_path):
    copy = str(tmp_path / 'memory')
    shutil.copytree(synthetic_memory, copy)
    values = osp.join(copy, 'object', 'values.bin')
    with open(values, 'r+b') as f:
        f.truncate(osp.getsize(values) // 2)
    with pytest.raises(MemoryBankError, match='object/values.bin'):
        HOOKS.build(dict(type='MemoryHook', memory_root=copy)).before_run(
            make_runner(cfg, MemoryModel()))


def test_hook_refuses_to_evaluate_on_bank_images(cfg):
    model = MemoryModel()
    hook = HOOKS.build(dict(type='MemoryHook'))
    cfg.val_dataloader.dataset.ann_file = cfg.train_dataloader.dataset.ann_file
    runner = make_runner(cfg, model)
    hook.before_run(runner)
    with pytest.raises(MemoryBankError, match='retrieve itself'):
        hook.before_val(runner)
    allowed = HOOKS.build(dict(type='MemoryHook', allow_eval_overlap=True))
    allowed.before_run(runner)
    allowed.before_val(runner)


def test_checkpoint_meta_records_memory_and_warns_on_swap(cfg, synthetic_memory, tmp_path):
    model = MemoryModel()
    hook = HOOKS.build(dict(type='MemoryHook'))
    runner = make_runner(cfg, model)
    hook.before_run(runner)
    checkpoint = dict(meta={})
    hook.before_save_checkpoint(runner, checkpoint)
    assert checkpoint['meta']['memory']['manifest_sha256'] == \
        MemoryRoot(synthetic_memory).manifest['_sha256']
    hook.after_load_checkpoint(runner, checkpoint)  # same memory: silent
    checkpoint['meta']['memory']['manifest_sha256'] = 'f' * 64
    with pytest.warns(UserWarning, match='MEMORY MISMATCH'):
        hook.after_load_checkpoint(runner, checkpoint)
