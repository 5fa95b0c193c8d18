"""Memory swap without retraining: appending images to a memory (lineage, refusals, copies
of images already in it), evaluating a trained MAPS checkpoint with another memory,
retrieval statistics (the training ones show that no training image retrieves itself)."""
import glob
import importlib.util
import json
import logging
import os
import os.path as osp
import re
import subprocess
import sys
import warnings
from unittest import mock

import faiss
import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmdet.registry import HOOKS

from mmmaps.memory.checkpoint_meta import check_checkpoint_memory
from mmmaps.memory import MemoryBank, MemoryBankError, MemoryRoot, build_external_memory
from mmmaps.memory import appender as appender_module
from mmmaps.memory.appender import MemoryAppender
from mmmaps.memory.build_plan import MemoryBuildError, plan_differences
from mmmaps.memory.memory_root import read_root_manifest
from mmmaps.memory.storage import sha256_file
from mmmaps.utils.checkpoint_loading import safe_torch_load

from ..conftest import MEMORY_CFG, REPO_ROOT, TINY_M2F, load_config_with_root, run_tool
from .test_memory_hook import (LOGGER_NAME, MemoryModel, build_dataset, file_sha256, image_paths,
                               load_rgb, make_runner, rows_holding)

TINY_MAPS = osp.join(REPO_ROOT, 'configs', 'maps', 'maps_r18_synthetic-panoptic.py')
ID_OFFSET = 100
NUM_NEW = 6
BUILD = ['memory.build.num_workers=0', 'memory.build.chunk_size=4']
LOADERS = [f'{s}_dataloader.{k}' for s in ('train', 'val', 'test')
           for k in ('num_workers=0', 'persistent_workers=False')]


def write_renumbered(src, dst, offset):
    """Copy a COCO-panoptic file with every image id shifted by ``offset``."""
    with open(src) as f:
        data = json.load(f)
    for image in data['images']:
        image['id'] += offset
    for ann in data['annotations']:
        ann['image_id'] += offset
    with open(dst, 'w') as f:
        json.dump(data, f)
    return dst


@pytest.fixture(scope='module')
def new_images(tmp_path_factory):
    """Newly labelled images: a second synthetic dataset (other seed), ids 101..106."""
    from mmmaps.datasets import generate_synthetic_panoptic
    root = str(tmp_path_factory.mktemp('new_images') / 'data')
    generate_synthetic_panoptic(root, num_train=NUM_NEW, num_val=1, seed=2, size=(64, 64),
                                progress=False)
    ann = osp.join(root, 'annotations', 'panoptic_train.json')
    return dict(ann=write_renumbered(ann, osp.join(root, 'annotations', 'panoptic_new.json'),
                                     ID_OFFSET),
                same_ids_ann=ann,
                img_prefix=osp.join(root, 'train'),
                seg_prefix=osp.join(root, 'annotations', 'panoptic_train'),
                ids=list(range(1 + ID_OFFSET, NUM_NEW + 1 + ID_OFFSET)))


def append_args(parent, new, out, ann=None):
    return ['tools/build_memory.py', MEMORY_CFG, '--append', '--parent', parent,
            '--source-ann', ann or new['ann'], '--img-prefix', new['img_prefix'],
            '--seg-prefix', new['seg_prefix'], '--out', out, '--device', 'cpu',
            '--cfg-options'] + BUILD


@pytest.fixture(scope='module')
def appended_memory(synthetic_root, synthetic_memory, new_images, tmp_path_factory):
    """The session memory + the new images, through tools/build_memory.py --append."""
    out = str(tmp_path_factory.mktemp('appended') / 'train_plus_new')
    proc = run_tool(append_args(synthetic_memory, new_images, out), synthetic_root)
    log = proc.stdout + proc.stderr
    assert 'appending 6 images' in log and 'memory written to' in log, log[-3000:]
    return out


def append_in_process(synthetic_root, parent, ann, img_prefix, seg_prefix, out):
    """MemoryAppender run as tools/build_memory.py --append does; returns what it logged."""
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root, {'memory.build.num_workers': 0,
                                                             'memory.build.chunk_size': 4})
    logged = []
    original = appender_module.print_log

    def record(msg, *args, **kwargs):
        logged.append((msg, kwargs.get('level', logging.INFO)))
        return original(msg, *args, **kwargs)

    with mock.patch.object(appender_module, 'print_log', record):
        appender = MemoryAppender(cfg, parent, ann, img_prefix, seg_prefix, out=out,
                                  device='cpu')
        appender.prepare(resume=False, force=False)
        appender.encode_chunks(progress=False)
        appender.merge()
    return logged


@pytest.fixture(scope='module')
def renumbered_memory(synthetic_root, synthetic_memory, tmp_path_factory):
    """The session memory + its own 8 training images again, renumbered 101..108 (a
    renumbered copy of the train annotations appended)."""
    folder = tmp_path_factory.mktemp('renumbered')
    ann = write_renumbered(osp.join(synthetic_root, 'annotations', 'panoptic_train.json'),
                           str(folder / 'panoptic_train_renumbered.json'), ID_OFFSET)
    out = str(folder / 'train_twice')
    logged = append_in_process(synthetic_root, synthetic_memory, ann,
                               osp.join(synthetic_root, 'train'),
                               osp.join(synthetic_root, 'annotations', 'panoptic_train'), out)
    return dict(root=out, log=logged)


@pytest.fixture(scope='module')
def val_appended_memory(synthetic_root, synthetic_memory, tmp_path_factory):
    """The session memory + the 4 val images (ids 9..12): a memory evaluation must refuse."""
    out = str(tmp_path_factory.mktemp('val_appended') / 'train_plus_val')
    append_in_process(synthetic_root, synthetic_memory,
                      osp.join(synthetic_root, 'annotations', 'panoptic_val.json'),
                      osp.join(synthetic_root, 'val'),
                      osp.join(synthetic_root, 'annotations', 'panoptic_val'), out)
    return out


def memory_cfg(synthetic_root, root, **retrieval):
    return load_config_with_root(MEMORY_CFG, synthetic_root, dict(
        {'memory.root': root}, **{f'memory.retrieval.{k}': v for k, v in retrieval.items()}))


def hook_for(cfg, memory_swap=False, **datasets):
    """A MemoryHook after before_run on a stand-in runner of ``cfg``."""
    hook = HOOKS.build(dict(type='MemoryHook', memory_swap=memory_swap))
    runner = make_runner(cfg, MemoryModel(), **datasets)
    hook.before_run(runner)
    return hook, runner


def new_image_paths(new_images):
    """(ids, image files) of the new images, in annotation order."""
    with open(new_images['ann']) as f:
        images = json.load(f)['images']
    return ([image['id'] for image in images],
            [osp.join(new_images['img_prefix'], image['file_name']) for image in images])


def leftovers(folder):
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------------------- append
def test_append_copies_the_parent_bit_for_bit(synthetic_memory, appended_memory, new_images):
    parent, child = MemoryRoot(synthetic_memory), MemoryRoot(appended_memory)
    for name in ('scene_bank', 'object_bank'):
        old, new = getattr(parent, name), getattr(child, name)
        n, m = old.num_entries, old.num_values
        assert new.num_entries == n + NUM_NEW
        np.testing.assert_array_equal(np.asarray(new.keys[:n]), np.asarray(old.keys))
        np.testing.assert_array_equal(new.image_ids[:n], old.image_ids)
        np.testing.assert_array_equal(new.offsets[:n + 1], old.offsets)
        assert np.asarray(new.values[:m]).tobytes() == np.asarray(old.values).tobytes()
        assert new.values.dtype == old.values.dtype
        for field, array in old.extras.items():
            np.testing.assert_array_equal(new.extras[field][:m], array)
        assert new.file_names[:n] == old.file_names
        assert new.image_ids[n:].tolist() == [101, 102, 103, 104, 105, 106]
        np.testing.assert_allclose(np.linalg.norm(new.keys, axis=1), 1, atol=1e-5)
        # content identities: the parent's copied, the new images' are their files' sha256
        np.testing.assert_array_equal(new.identities[:n], old.identities)
        assert new.identities[n:].tolist() == [
            file_sha256(osp.join(new_images['img_prefix'], name))
            for name in new.file_names[n:]]
    # the scene keys of the new images are their query keys, also in the query cache
    cache = child.query_cache
    assert len(cache) == parent.scene_bank.num_entries + NUM_NEW
    keys, found = cache.lookup(child.scene_bank.identities.tolist())
    assert all(found)
    np.testing.assert_array_equal(keys.numpy(), np.asarray(child.scene_bank.keys))
    # the object bank has the new images' segments
    objects = child.object_bank
    assert objects.offsets[-1] > parent.object_bank.num_values
    assert objects.manifest['num_values'] == child.manifest['stats']['num_segments']


def test_appended_index_covers_every_key(appended_memory):
    for bank_dir in ('scene', 'object'):
        bank = MemoryBank.load(osp.join(appended_memory, bank_dir))
        keys = np.ascontiguousarray(bank.keys, dtype=np.float32)
        assert bank.index.ntotal == len(keys)
        flat = faiss.IndexFlatIP(keys.shape[1])
        flat.add(keys)
        k = 5
        exact_scores, exact_rows = flat.search(keys, k)
        scores, rows = bank.search(keys, k)
        np.testing.assert_array_equal(rows, exact_rows)
        np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
        assert (rows[:, 0] == np.arange(len(keys))).all()


def test_appended_images_retrieve_themselves(synthetic_root, appended_memory, new_images):
    memory = build_external_memory(memory_cfg(synthetic_root, appended_memory, k=3).memory,
                                   device='cpu')
    ids, paths = new_image_paths(new_images)
    images = [load_rgb(p) for p in paths]
    result = memory.retrieve(images, paths, training=False, whole_pictures=[True] * len(paths))
    assert result.keys_from_cache.all()  # the new images' keys are in the new query cache
    assert result.image_ids[:, 0].tolist() == ids
    np.testing.assert_allclose(result.scores[:, 0].numpy(), 1, atol=1e-5)
    # their objects are the first object slots
    objects = memory.root.object_bank
    for b, image_id in enumerate(ids):
        row = objects.row_of_image_id(image_id)
        count = objects.offsets[row + 1] - objects.offsets[row]
        assert count > 0 and (result.object_image_ids[b, :count] == image_id).all()
    # in training (the leak guard), they do not
    guarded = memory.retrieve(images, paths, training=True)
    assert not (guarded.image_ids == torch.tensor(ids)[:, None]).any()
    assert memory.self_retrievals(guarded, paths) == [False] * NUM_NEW
    assert memory.self_retrievals(result, paths) == [True] * NUM_NEW


def test_renumbered_append_holds_each_image_twice_and_training_retrieves_neither(
        synthetic_root, synthetic_memory, renumbered_memory, caplog):
    """The train images appended again under new ids: the append warns, the memory holds
    two rows of each picture, and a training query retrieves neither copy."""
    warned = [m for m, level in renumbered_memory['log'] if level == logging.WARNING]
    assert any(m.startswith(f'8 of the 8 appended images are already in {synthetic_memory} '
                            'under other ids') for m in warned), renumbered_memory['log']
    cfg = memory_cfg(synthetic_root, renumbered_memory['root'])
    train = build_dataset(cfg.train_dataloader.dataset)
    hook, runner = hook_for(cfg, train=train)
    memory = hook.memory
    bank = memory.root.scene_bank
    assert bank.num_entries == 16
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        hook.before_train(runner)
    assert 'leak guard: 8 of the 8 training images are in the memory' in caplog.text
    paths, ids = image_paths(train), [train.get_data_info(i)['img_id'] for i in range(8)]
    copies = []
    for path, image_id in zip(paths, ids):
        own = rows_holding(bank, path)
        assert len(own) == 2 and len(memory.root.scene_bank.rows_of_identity(
            file_sha256(path))) == 2
        assert sorted(bank.image_ids[sorted(own)].tolist()) == [image_id, image_id + ID_OFFSET]
        copies.append(own)
    assert memory.in_memory(paths) == [True] * 8
    images = [load_rgb(p) for p in paths]
    guarded = memory.retrieve(images, paths, training=True)
    unguarded = memory.retrieve(images, paths, training=False)
    assert memory.self_retrievals(guarded, paths) == [False] * 8
    assert memory.self_retrievals(unguarded, paths) == [True] * 8
    for b, own in enumerate(copies):
        assert not own & set(guarded.rows[b].tolist())
        assert (guarded.rows[b] >= 0).all()  # k others are left (14 of 16 rows)
        # unguarded, both copies come first (the same picture, the same key)
        assert set(unguarded.rows[b, :2].tolist()) == own
        np.testing.assert_allclose(unguarded.scores[b, :2].numpy(), 1, atol=1e-5)
    # the object memory of a training query holds no object of its own picture either
    for b, image_id in enumerate(ids):
        held = set(guarded.object_image_ids[b].tolist()) - {-1}
        assert held and not held & {image_id, image_id + ID_OFFSET}


def test_append_manifest_records_lineage(synthetic_root, synthetic_memory, appended_memory,
                                         new_images):
    manifest = read_root_manifest(appended_memory)
    parent = read_root_manifest(synthetic_memory)
    (entry, ) = manifest['lineage']
    assert entry['operation'] == 'append'
    assert entry['parent'] == dict(root=synthetic_memory, manifest_sha256=parent['_sha256'],
                                   num_images=8)
    added = entry['appended']
    assert added['ann_file'] == new_images['ann']
    assert added['ann_sha256'] == sha256_file(new_images['ann'])
    assert added['num_images'] == NUM_NEW
    assert added['img_prefix'] == new_images['img_prefix']
    assert entry['time'] == manifest['created']
    # the first source stays the parent's (leak guard, eval refusal), all are listed
    assert manifest['source'] == parent['source']
    assert [s['ann_sha256'] for s in manifest['sources']] == [
        parent['source']['ann_sha256'], added['ann_sha256']]
    assert manifest['stats']['num_images'] == 8 + NUM_NEW
    assert manifest['stats']['appended_images'] == NUM_NEW
    assert manifest['plan']['parent']['manifest_sha256'] == parent['_sha256']
    assert manifest['encoders'] == parent['encoders']
    memory = MemoryRoot(appended_memory)
    assert memory.num_images == 8 + NUM_NEW and len(memory.sources) == 2
    assert f'+{NUM_NEW} images of {new_images["ann"]}' in memory.summary()
    # the parent is untouched, and the build folder is gone
    assert read_root_manifest(synthetic_memory)['_sha256'] == parent['_sha256']
    assert not osp.exists(appended_memory + '.build')
    # appending the same images to the same parent again: up to date
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root, {'memory.build.num_workers': 0,
                                                             'memory.build.chunk_size': 4})
    again = MemoryAppender(cfg, synthetic_memory, new_images['ann'], new_images['img_prefix'],
                           new_images['seg_prefix'], out=appended_memory, device='cpu')
    assert again.is_up_to_date()


def test_append_refuses_id_collisions_and_other_plans(synthetic_root, synthetic_memory,
                                                      new_images, tmp_path):
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root, {'memory.build.num_workers': 0})
    out = str(tmp_path / 'refused')
    args = (new_images['img_prefix'], new_images['seg_prefix'])
    # ids 1..6 are already in the parent (ids 1..8)
    with pytest.raises(MemoryBuildError, match=r'6 of the 6 image ids .* already in the memory'
                       r'.*\[1, 2, 3, 4, 5\].*above 8'):
        MemoryAppender(cfg, synthetic_memory, new_images['same_ids_ann'], *args, out=out)
    # another key encoder (seed) than the parent's
    other = load_config_with_root(MEMORY_CFG, synthetic_root, {'memory.key_encoder.seed': 1})
    with pytest.raises(MemoryBuildError, match=r'differs from the one it was built with in '
                       r'key_encoder\.seed .*weights_sha256'):
        MemoryAppender(other, synthetic_memory, new_images['ann'], *args, out=out)
    other = load_config_with_root(MEMORY_CFG, synthetic_root, {'memory.value_dtype': 'float32'})
    with pytest.raises(MemoryBuildError, match='value_dtype'):
        MemoryAppender(other, synthetic_memory, new_images['ann'], *args, out=out)
    with pytest.raises(MemoryBuildError, match='is the parent memory'):
        MemoryAppender(cfg, synthetic_memory, new_images['ann'], *args, out=synthetic_memory)
    with pytest.raises(MemoryBankError, match='does not exist'):
        MemoryAppender(cfg, str(tmp_path / 'nowhere'), new_images['ann'], *args, out=out)
    assert leftovers(tmp_path) == []
    # the tool says it in one line, without a traceback, and leaves nothing behind
    env = dict(os.environ, MMMAPS_SYNTHETIC_ROOT=synthetic_root,
               PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')])))
    proc = subprocess.run(
        [sys.executable] + append_args(synthetic_memory, new_images, out,
                                       ann=new_images['same_ids_ann']),
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert 'build_memory.py: error: 6 of the 6 image ids' in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert leftovers(tmp_path) == []


def test_hook_refuses_evaluation_on_appended_images(synthetic_root, synthetic_memory,
                                                    val_appended_memory, appended_memory,
                                                    new_images):
    """Images appended to the memory are in it: evaluating on them is refused (by content),
    whichever annotation file brought them."""
    cfg = memory_cfg(synthetic_root, synthetic_memory)
    val = build_dataset(cfg.val_dataloader.dataset)
    hook, runner = hook_for(cfg, val=val, test=val)
    hook.before_val(runner)  # the parent memory holds no val image
    hook.before_test(runner)

    cfg = memory_cfg(synthetic_root, val_appended_memory)
    hook, runner = hook_for(cfg, val=val, test=val)
    assert hook.memory.root.num_images == 12
    with pytest.raises(MemoryBankError, match=r'4 of the 4 images of the val dataset are in '
                       rf'the memory {re.escape(val_appended_memory)} .*retrieve itself'):
        hook.before_val(runner)
    with pytest.raises(MemoryBankError, match='4 of the 4 images of the test dataset'):
        hook.before_test(runner)
    cfg.memory.retrieval.allow_eval_overlap = True
    allowed, runner = hook_for(cfg, val=val)
    allowed.before_val(runner)

    # the new images appended from another annotation file, as the val set
    cfg = memory_cfg(synthetic_root, appended_memory)
    new = build_dataset(cfg.val_dataloader.dataset, ann_file=new_images['ann'], data_prefix=dict(
        img=new_images['img_prefix'] + '/', seg=new_images['seg_prefix'] + '/'))
    hook, runner = hook_for(cfg, val=new)
    with pytest.raises(MemoryBankError, match='6 of the 6 images of the val dataset'):
        hook.before_val(runner)


# ---------------------------------------------------------------------------- swap (hook)
def test_swap_is_info_and_incompatible_swap_is_refused(synthetic_root, synthetic_memory,
                                                       appended_memory, caplog):
    trained, _ = hook_for(memory_cfg(synthetic_root, synthetic_memory))
    checkpoint = dict(meta={})
    trained.before_save_checkpoint(None, checkpoint)
    saved = checkpoint['meta']['memory']
    assert saved['num_images'] == 8 and saved['key_encoder']['type'] == 'CLIPCLSEncoder'
    assert saved['object_dim'] == 384

    swapped, runner = hook_for(memory_cfg(synthetic_root, appended_memory), memory_swap=True)
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # an explicit swap does not warn
            swapped.after_load_checkpoint(runner, checkpoint)
    text = caplog.text
    assert f'memory swap: the memory {appended_memory} (14 images' in text
    assert f'replaces the training memory {synthetic_memory} (8 images' in text
    assert f'it is that memory + {NUM_NEW} images of' in text
    assert 'key/dense encoders and dimensions match' in text
    assert 'MEMORY MISMATCH' not in text

    # without --memory it is still the loud mismatch warning
    implicit, runner = hook_for(memory_cfg(synthetic_root, appended_memory))
    with pytest.warns(UserWarning, match='MEMORY MISMATCH.*tools/test.py --memory'):
        implicit.after_load_checkpoint(runner, checkpoint)

    # a checkpoint trained with other encoders / dims cannot read the swapped memory
    other = json.loads(json.dumps(checkpoint))
    other['meta']['memory']['dense_encoder']['weights_sha256'] = 'f' * 64
    other['meta']['memory']['scene_dim'] = 512
    with pytest.raises(MemoryBankError, match=r'memory swap refused.*dense encoder '
                       r'weights_sha256: trained .ffff.*scene dim: trained 512, memory 384'):
        swapped.after_load_checkpoint(runner, other)
    # without --memory an incompatible memory is an error too (issue 16), unless overridden
    with pytest.raises(MemoryBankError, match=r'incompatible memory.*dense encoder '
                       r'weights_sha256.*--allow-incompatible-memory'):
        implicit.after_load_checkpoint(runner, other)
    implicit.allow_incompatible_memory = True
    with pytest.warns(UserWarning, match='INCOMPATIBLE: dense encoder'):
        implicit.after_load_checkpoint(runner, other)


def test_swap_with_a_checkpoint_of_an_older_format(synthetic_root, synthetic_memory,
                                                   appended_memory, caplog):
    """Checkpoint meta without encoder identities: the swap is logged, nothing is claimed."""
    memory = build_external_memory(memory_cfg(synthetic_root, appended_memory).memory,
                                   device='cpu')
    logger = logging.getLogger(LOGGER_NAME)
    old = dict(root=synthetic_memory,
               manifest_sha256=read_root_manifest(synthetic_memory)['_sha256'])
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        check_checkpoint_memory(memory, dict(meta=dict(memory=old)), True, logger)
        check_checkpoint_memory(memory, dict(meta={}), True, logger)
        check_checkpoint_memory(memory, dict(meta={}), False, logger)  # nothing to say
    assert 'records no encoders to compare' in caplog.text
    assert f'(it is that memory + {NUM_NEW} images of' in caplog.text
    assert caplog.text.count('does not record the memory it was trained with') == 1
    with pytest.warns(UserWarning, match='MEMORY MISMATCH'):
        check_checkpoint_memory(memory, dict(meta=dict(memory=old)), False, logger)


def test_training_statistics_are_exact(synthetic_root, synthetic_memory):
    """The statistics of a training retrieval, against an exact search that skips each
    query's own picture."""
    memory = build_external_memory(
        memory_cfg(synthetic_root, synthetic_memory, k=3, max_objects=40).memory,
        device='cpu')
    cfg = memory_cfg(synthetic_root, synthetic_memory)
    paths = image_paths(build_dataset(cfg.train_dataloader.dataset))[:4]
    images = [load_rgb(p) for p in paths]
    result = memory.retrieve(images, paths, training=True)
    stats = result.statistics(40)
    bank, objects = memory.root.scene_bank, memory.root.object_bank
    keys = np.asarray(bank.keys, np.float32)
    top_sims, slots = [], []
    for path in paths:
        (own, ) = rows_holding(bank, path)
        sims = keys[own] @ keys.T
        sims[own] = -np.inf
        order = np.argsort(-sims)[:3]
        top_sims.append(sims[order])
        slots.append(min(40, int(sum(objects.offsets[r + 1] - objects.offsets[r]
                                     for r in order))))
    top_sims = np.array(top_sims)
    assert stats['scene_sim'] == pytest.approx(top_sims[:, 0].mean(), abs=1e-5)
    assert stats['scene_sim_k'] == pytest.approx(top_sims.mean(), abs=1e-5)
    assert stats['object_slots'] == pytest.approx(np.mean(slots) / 40, abs=1e-6)
    assert stats['key_cache_hits'] == 0.0  # training keys: the key encoder on the images
    assert stats['scene_sim'] < 0.9999  # self-similarity (1.0) excluded
    scene_only = memory.retrieve(images, paths, training=True, with_objects=False)
    assert set(scene_only.statistics(40)) == {'scene_sim', 'scene_sim_k', 'key_cache_hits'}


def test_plan_differences_names_the_fields():
    a = dict(key_encoder=dict(type='X', weights_sha256='a' * 64), value_dtype='float16',
             image_ids=(1, 2), index=dict(type='HNSW'))
    b = dict(key_encoder=dict(type='X', weights_sha256='b' * 64), value_dtype='float32',
             image_ids=[1, 2], index=dict(type='HNSW'))
    assert plan_differences(a, b) == [
        'key_encoder.weights_sha256 (aaaaaaaaaaaaaaaa != bbbbbbbbbbbbbbbb)',
        'value_dtype (float16 != float32)']


def load_test_tool():
    spec = importlib.util.spec_from_file_location('mmmaps_test_tool',
                                                  osp.join(REPO_ROOT, 'tools', 'test.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_test_tool_memory_needs_a_maps_config_and_a_memory(synthetic_root, tmp_path,
                                                           monkeypatch):
    monkeypatch.setenv('MMMAPS_SYNTHETIC_ROOT', synthetic_root)
    tool = load_test_tool()
    ckpt = tmp_path / 'fake.pth'
    ckpt.write_bytes(b'')
    with pytest.raises(ValueError, match=r'--memory needs a MAPS config; .*mask2former_r18.*'
                       r'model type Mask2Former\) lacks a `memory` section and custom_hooks'):
        tool.main([TINY_M2F, str(ckpt), '--memory', str(tmp_path), '--work-dir',
                   str(tmp_path / 'w')])
    with pytest.raises(MemoryBankError, match='does not exist; build it'):
        tool.main([TINY_MAPS, str(ckpt), '--memory', str(tmp_path / 'none'), '--work-dir',
                   str(tmp_path / 'w')])


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope='module')
def trained_maps(synthetic_root, synthetic_memory, tmp_path_factory):
    """Tiny MAPS trained 2 iterations through tools/train.py with the session memory; its
    training keys come from the whole-file cache (query_keys='full_image_cache'), so each is
    its image's bank key (what the leak-guard bound below needs)."""
    work = str(tmp_path_factory.mktemp('maps_swap') / 'train')
    proc = run_tool(['tools/train.py', TINY_MAPS, '--work-dir', work, '--cfg-options',
                     'train_cfg.max_iters=2', 'train_cfg.val_interval=100',
                     'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
                     'train_dataloader.batch_size=2', f'memory.root={synthetic_memory}',
                     "memory.retrieval.query_keys='full_image_cache'"]
                    + LOADERS, synthetic_root)
    return dict(work=work, ckpt=osp.join(work, 'iter_2.pth'), log=proc.stdout + proc.stderr)


def test_retrieval_statistics_are_logged_in_training(synthetic_root, synthetic_memory,
                                                     trained_maps):
    log = trained_maps['log']
    lines = [line for line in log.splitlines() if 'Iter(train) [2/2]' in line]
    assert lines, log[-3000:]
    for name in ('retrieval/scene_sim', 'retrieval/scene_sim_k', 'retrieval/object_slots',
                 'retrieval/key_cache_hits'):
        assert f'{name}: ' in lines[-1], lines[-1]
    # ... and in the visualizer backends (LocalVisBackend here; TensorBoard alike), at full
    # precision
    (scalars, ) = glob.glob(osp.join(trained_maps['work'], '*', 'vis_data', 'scalars.json'))
    with open(scalars) as f:
        records = [json.loads(line) for line in f if line.strip()]
    logged = [r for r in records if 'retrieval/scene_sim' in r]
    assert [r['step'] for r in logged] == [1, 2]

    # The leak guard in training: no training image retrieves itself. Every training key
    # comes from the query cache (full_image_cache: by content, whatever the augmentation),
    # so it *is* the
    # image's bank key and retrieving itself would score exactly 1. Each logged value is a
    # mean (over a batch, over the log window) of per-image rank-1 similarities, so it lies
    # between the smallest and the largest similarity of a training image to its most
    # similar *other* image (exact search here).
    keys = np.asarray(MemoryRoot(synthetic_memory).scene_bank.keys, np.float32)
    sims = keys @ keys.T
    np.testing.assert_allclose(np.diag(sims), 1, atol=1e-5)  # what self-retrieval scores
    np.fill_diagonal(sims, -np.inf)
    best_other = sims.max(1)
    top5_other = np.sort(sims, axis=1)[:, ::-1][:, :5].mean(1)
    assert best_other.max() < 0.9999  # so the bound below tells the two apart
    for record in logged:
        assert record['retrieval/key_cache_hits'] == 1.0
        scene_sim = record['retrieval/scene_sim']
        assert scene_sim < 0.9999, record  # an unguarded run logs 1.0 here
        assert best_other.min() - 1e-5 <= scene_sim <= best_other.max() + 1e-5, record
        assert (top5_other.min() - 1e-5 <= record['retrieval/scene_sim_k']
                <= top5_other.max() + 1e-5), record
        assert record['retrieval/scene_sim_k'] <= scene_sim + 1e-6
        assert 0 < record['retrieval/object_slots'] <= 1
    # what the statistic reads without the guard (the evaluation policy) for these images:
    # every one retrieves itself, scene_sim = 1
    cfg = memory_cfg(synthetic_root, synthetic_memory)
    memory = build_external_memory(cfg.memory, device='cpu')
    paths = image_paths(build_dataset(cfg.train_dataloader.dataset))
    unguarded = memory.retrieve([load_rgb(p) for p in paths], paths, training=False,
                                with_objects=False)
    assert unguarded.statistics(40)['scene_sim'] == pytest.approx(1, abs=1e-5)


def test_trained_maps_evaluates_with_the_original_and_an_appended_memory(
        synthetic_root, synthetic_memory, appended_memory, trained_maps):
    ckpt = trained_maps['ckpt']
    meta = safe_torch_load(ckpt, map_location='cpu')['meta']['memory']
    assert meta['root'] == synthetic_memory and meta['num_images'] == 8
    for name, memory, expected in (
            ('original', synthetic_memory, 'is the memory the checkpoint was trained with'),
            ('appended', appended_memory,
             f'memory swap: the memory {appended_memory} (14 images')):
        work = osp.join(trained_maps['work'], f'test_{name}')
        proc = run_tool(['tools/test.py', TINY_MAPS, ckpt, '--work-dir', work,
                         '--memory', memory, '--cfg-options'] + LOADERS, synthetic_root)
        log = proc.stdout + proc.stderr
        assert f'--memory: {memory} replaces the configured memory' in log
        assert expected in log, log[-3000:]
        assert 'MEMORY MISMATCH' not in log
        assert f'retrieval (test) from {memory}: retrieval/scene_sim=' in log
        with open(osp.join(work, 'metrics.json')) as f:
            assert 'coco_panoptic/PQ' in json.load(f)
    assert f'replaces the training memory {synthetic_memory} (8 images' in log
    assert f'(it is that memory + {NUM_NEW} images of' in log


def test_tensorboard_runtime_snippet(tmp_path):
    snippet = osp.join(REPO_ROOT, 'configs', '_base_', 'runtime', 'tensorboard.py')
    child = tmp_path / 'uses_snippet.py'
    child.write_text(f'_base_ = [{snippet!r}]\n')
    visualizer = Config.fromfile(str(child)).visualizer
    assert visualizer.type == 'DetLocalVisualizer' and visualizer.name == 'visualizer'
    assert [b['type'] for b in visualizer.vis_backends] == ['LocalVisBackend',
                                                            'TensorboardVisBackend']
    # the documented recipe for configs that already get `visualizer` from default_runtime
    child.write_text(f'_base_ = [{TINY_MAPS!r}]\nvisualizer = dict(vis_backends=['
                     "dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])\n")
    inherited = Config.fromfile(str(child)).visualizer.to_dict()
    inherited.pop('_scope_', None)  # mmdet's default_runtime is read through `mmdet::`
    assert inherited == visualizer.to_dict()
