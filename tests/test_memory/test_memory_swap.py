"""Memory swap without retraining: appending images to a memory (lineage, refusals),
evaluating a trained MAPS checkpoint with another memory, retrieval statistics."""
import glob
import importlib.util
import json
import logging
import os
import os.path as osp
import subprocess
import sys
import warnings

import faiss
import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmdet.registry import HOOKS

from mmmaps.memory import MemoryBank, MemoryBankError, MemoryRetriever, MemoryRoot
from mmmaps.utils.checkpoint_loading import safe_torch_load
from mmmaps.engine.hooks.memory_hook import StatsMemoryRetriever
from mmmaps.memory.builder import MemoryAppender, MemoryBuildError, plan_differences
from mmmaps.memory.memory_root import read_root_manifest
from mmmaps.memory.storage import sha256_file

from ..conftest import MEMORY_CFG, REPO_ROOT, TINY_M2F, load_config_with_root, run_tool
from .test_memory_hook import MemoryModel, make_runner

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


def leftovers(folder):
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------------------- append
def test_append_copies_the_parent_bit_for_bit(synthetic_memory, appended_memory):
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
    # the scene keys of the new images are their query keys, also in the query cache
    cache = child.query_cache
    assert len(cache) == parent.scene_bank.num_entries + NUM_NEW
    np.testing.assert_array_equal(cache.lookup(child.scene_bank.image_ids).numpy(),
                                  np.asarray(child.scene_bank.keys))
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


def test_appended_images_retrieve_themselves(appended_memory, new_images):
    memory = MemoryRoot(appended_memory)
    retriever = MemoryRetriever(memory.scene_bank, memory.object_bank, k=3,
                                exclude_self=False)
    ids = new_images['ids']
    keys = memory.query_cache.lookup(ids)
    result = retriever.query(keys, image_ids=ids)
    assert result.image_ids[:, 0].tolist() == ids
    np.testing.assert_allclose(result.scores[:, 0].numpy(), 1, atol=1e-5)
    # their objects are the first object slots
    for b, image_id in enumerate(ids):
        row = memory.object_bank.row_of_image_id(image_id)
        count = memory.object_bank.offsets[row + 1] - memory.object_bank.offsets[row]
        assert (result.object_image_ids[b, :count] == image_id).all()
    # with the leak guard on, they do not
    guarded = MemoryRetriever(memory.scene_bank, memory.object_bank, k=3, exclude_self=True)
    assert not (guarded.query(keys, image_ids=ids).image_ids
                == torch.tensor(ids)[:, None]).any()


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


def test_hook_counts_appended_sources(synthetic_root, appended_memory, new_images):
    """Leak guard: on when any source of the memory is the training file; evaluation on
    any source of the memory is refused."""
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root, {'memory.root': appended_memory})
    hook = HOOKS.build(dict(type='MemoryHook'))
    runner = make_runner(cfg, MemoryModel())
    hook.before_run(runner)
    assert hook.retriever.exclude_self
    cfg.val_dataloader.dataset.ann_file = new_images['ann']
    with pytest.raises(MemoryBankError, match='retrieve itself'):
        hook.before_val(runner)


# ---------------------------------------------------------------------------- swap (hook)
def test_swap_is_info_and_incompatible_swap_is_refused(synthetic_root, synthetic_memory,
                                                       appended_memory, caplog):
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root)
    trained = HOOKS.build(dict(type='MemoryHook', memory_root=synthetic_memory))
    trained.before_run(make_runner(cfg, MemoryModel()))
    checkpoint = dict(meta={})
    trained.before_save_checkpoint(None, checkpoint)
    saved = checkpoint['meta']['memory']
    assert saved['num_images'] == 8 and saved['key_encoder']['type'] == 'CLIPCLSEncoder'
    assert saved['object_dim'] == 384

    swapped = HOOKS.build(dict(type='MemoryHook', memory_root=appended_memory, memory_swap=True))
    runner = make_runner(cfg, MemoryModel())
    swapped.before_run(runner)
    with caplog.at_level(logging.INFO, logger='test_memory_hook'):
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # an explicit swap does not warn
            swapped.after_load_checkpoint(runner, checkpoint)
    text = caplog.text
    assert f'memory swap: the memory {appended_memory} (14 images' in text
    assert f'replaces the training memory {synthetic_memory} (8 images' in text
    assert f'it is that memory + {NUM_NEW} images of' in text
    assert 'MEMORY MISMATCH' not in text

    # without --memory it is still the loud mismatch warning
    implicit = HOOKS.build(dict(type='MemoryHook', memory_root=appended_memory))
    implicit.before_run(runner)
    with pytest.warns(UserWarning, match='MEMORY MISMATCH.*tools/test.py --memory'):
        implicit.after_load_checkpoint(runner, checkpoint)

    # a checkpoint trained with other encoders / dims cannot read the swapped memory
    other = json.loads(json.dumps(checkpoint))
    other['meta']['memory']['dense_encoder']['weights_sha256'] = 'f' * 64
    other['meta']['memory']['scene_dim'] = 512
    with pytest.raises(MemoryBankError, match=r'memory swap refused.*dense encoder '
                       r'weights_sha256: trained .ffff.*scene dim: trained 512, memory 384'):
        swapped.after_load_checkpoint(runner, other)
    with pytest.warns(UserWarning, match='INCOMPATIBLE: dense encoder'):
        implicit.after_load_checkpoint(runner, other)


def test_swap_with_a_checkpoint_of_an_older_format(synthetic_root, synthetic_memory,
                                                   appended_memory, caplog):
    """Checkpoint meta without encoder identities: the swap is logged, nothing is claimed."""
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root)
    hook = HOOKS.build(dict(type='MemoryHook', memory_root=appended_memory, memory_swap=True))
    runner = make_runner(cfg, MemoryModel())
    hook.before_run(runner)
    old = dict(root=synthetic_memory,
               manifest_sha256=read_root_manifest(synthetic_memory)['_sha256'])
    with caplog.at_level(logging.INFO, logger='test_memory_hook'):
        hook.after_load_checkpoint(runner, dict(meta=dict(memory=old)))
        hook.after_load_checkpoint(runner, dict(meta={}))
    assert 'records no encoders to compare' in caplog.text
    assert 'does not record the memory it was trained with' in caplog.text


def test_retrieval_statistics_are_exact_and_change_nothing(synthetic_memory):
    memory = MemoryRoot(synthetic_memory)
    args = (memory.scene_bank, memory.object_bank)
    plain = MemoryRetriever(*args, k=3, max_objects=40, exclude_self=True)
    stats = StatsMemoryRetriever(*args, k=3, max_objects=40, exclude_self=True)
    ids = memory.scene_bank.image_ids[:4]
    keys = torch.from_numpy(np.asarray(memory.scene_bank.keys[:4]).copy())
    a = plain.query(keys, image_ids=ids, training=True)
    b = stats.query(keys, ids, training=True)
    for field in ('scene_values', 'scene_mask', 'image_ids', 'scores', 'object_values',
                  'object_mask', 'object_category_ids', 'object_image_ids'):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    means = stats.pop_stats(training=True)
    assert means['scene_sim'] == pytest.approx(float(a.scores[:, 0].mean()), abs=1e-6)
    assert means['scene_sim_k'] == pytest.approx(float(a.scores.mean()), abs=1e-6)
    assert means['object_slots'] == pytest.approx(
        float((~a.object_mask).sum(1).float().mean() / 40), abs=1e-6)
    assert stats.pop_stats(training=True) == {} == stats.pop_stats(training=False)
    stats.query(keys, with_objects=False)  # evaluation, scene only
    assert set(stats.pop_stats(training=False)) == {'scene_sim', 'scene_sim_k'}


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
    """Tiny MAPS trained 2 iterations through tools/train.py with the session memory."""
    work = str(tmp_path_factory.mktemp('maps_swap') / 'train')
    proc = run_tool(['tools/train.py', TINY_MAPS, '--work-dir', work, '--cfg-options',
                     'train_cfg.max_iters=2', 'train_cfg.val_interval=100',
                     'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
                     'train_dataloader.batch_size=2', f'memory.root={synthetic_memory}']
                    + LOADERS, synthetic_root)
    return dict(work=work, ckpt=osp.join(work, 'iter_2.pth'), log=proc.stdout + proc.stderr)


def test_retrieval_statistics_are_logged_in_training(trained_maps):
    log = trained_maps['log']
    lines = [line for line in log.splitlines() if 'Iter(train) [2/2]' in line]
    assert lines, log[-3000:]
    for name in ('retrieval/scene_sim', 'retrieval/scene_sim_k', 'retrieval/object_slots'):
        assert f'{name}: ' in lines[-1], lines[-1]
    values = {kv.split(': ')[0]: float(kv.split(': ')[1]) for kv in lines[-1].split('  ')
              if kv.startswith('retrieval/')}
    assert 0 < values['retrieval/scene_sim_k'] <= values['retrieval/scene_sim'] <= 1 + 1e-5
    assert 0 < values['retrieval/object_slots'] <= 1
    # ... and in the visualizer backends (LocalVisBackend here; TensorBoard alike)
    (scalars, ) = glob.glob(osp.join(trained_maps['work'], '*', 'vis_data', 'scalars.json'))
    with open(scalars) as f:
        records = [json.loads(line) for line in f if line.strip()]
    logged = [r for r in records if 'retrieval/scene_sim' in r]
    assert [r['step'] for r in logged] == [1, 2]


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
