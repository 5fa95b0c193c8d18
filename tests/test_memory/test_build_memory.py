"""tools/build_memory.py and MemoryBuilder on the synthetic dataset (random-init ViT-S/16)."""
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from pycocotools import mask as _  # noqa: F401  (keeps pycocotools import cost out of timings)

from mmmaps.memory import MemoryBank, MemoryRoot
from mmmaps.memory.builder import MemoryBuildError, MemoryBuilder, parse_shard
from mmmaps.memory.segment_pooling import pool_segments, rgb_to_panoptic_id

from ..conftest import MEMORY_CFG, REPO_ROOT, load_config_with_root, run_tool

OPTIONS = {'memory.build.chunk_size': 3, 'memory.build.num_workers': 0}
BANK_ARRAYS = ('keys.npy', 'values.bin', 'offsets.npy', 'image_ids.npy')


def make_builder(root, out, **kwargs):
    cfg = load_config_with_root(MEMORY_CFG, root, OPTIONS)
    return MemoryBuilder(cfg, out=str(out), device='cpu', **kwargs)


def bank_digest(path):
    """Every array of a bank (not its build time / index bytes)."""
    manifest = json.load(open(osp.join(path, 'manifest.json')))
    return {name: info['sha256'] for name, info in manifest['files'].items()
            if name != 'index.faiss'}


def test_memory_contents(synthetic_root, synthetic_memory):
    memory = MemoryRoot(synthetic_memory)
    panoptic = json.load(open(osp.join(synthetic_root, 'annotations', 'panoptic_train.json')))
    num_images = len(panoptic['images'])
    scene, objects = memory.scene_bank, memory.object_bank
    assert scene.num_entries == objects.num_entries == num_images == len(memory.query_cache)
    np.testing.assert_allclose(np.linalg.norm(scene.keys, axis=1), 1, atol=1e-5)
    assert scene.key_dim == scene.value_dim == memory.key_encoder['out_channels']
    # one object per ground-truth segment, in annotation order, labels contiguous
    cat2label = {c['id']: i for i, c in enumerate(panoptic['categories'])}
    by_id = {a['image_id']: a for a in panoptic['annotations']}
    for row, image_id in enumerate(objects.image_ids):
        segments = by_id[int(image_id)]['segments_info']
        sl = objects.value_slice(row)
        assert sl.stop - sl.start == len(segments)
        assert objects.extras['category_ids'][sl].tolist() == [
            cat2label[s['category_id']] for s in segments]
        assert objects.extras['areas'][sl].tolist() == [s['area'] for s in segments]
    assert objects.manifest['value_encoder']['type'] == 'TiledCLIPDenseEncoder'
    assert memory.source['ann_file'].endswith('panoptic_train.json')
    assert set(memory.scene_bank.file_names) == {i['file_name'] for i in panoptic['images']}
    # the query cache equals the keys
    np.testing.assert_array_equal(memory.query_cache.lookup(scene.image_ids).numpy(),
                                  np.asarray(scene.keys))


def test_object_values_are_pooled_encoder_features(synthetic_root, synthetic_memory):
    import mmcv
    from mmmaps.memory import build_memory_encoder
    memory = MemoryRoot(synthetic_memory)
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root)
    encoder = build_memory_encoder(cfg.memory.dense_encoder)
    assert encoder.describe() == memory.dense_encoder
    panoptic = json.load(open(osp.join(synthetic_root, 'annotations', 'panoptic_train.json')))
    ann = panoptic['annotations'][1]
    image = mmcv.imread(osp.join(synthetic_root, 'train', ann['file_name'].replace('.png', '.jpg')),
                        channel_order='rgb')
    pan = rgb_to_panoptic_id(mmcv.imread(
        osp.join(synthetic_root, 'annotations', 'panoptic_train', ann['file_name']),
        flag='color', channel_order='rgb'))
    feats = encoder([torch.from_numpy(image.transpose(2, 0, 1).copy())])[0]
    pooled, valid, _ = pool_segments(feats, torch.from_numpy(pan),
                                     [s['id'] for s in ann['segments_info']])
    row = memory.object_bank.row_of_image_id(ann['image_id'])
    stored = np.asarray(memory.object_bank.values_of(row), np.float32)
    np.testing.assert_allclose(stored, pooled[valid].numpy(), atol=2e-3)  # float16 storage


def test_killed_then_resumed_build_is_identical(synthetic_root, synthetic_memory, tmp_path):
    out = tmp_path / 'resumed'
    first = make_builder(synthetic_root, out)
    first.prepare(resume=False, force=False)
    first.encode_chunks(progress=False, max_chunks=1)  # "killed" after one chunk
    assert not osp.exists(out) and len(first.done_chunks()) == 1
    again = make_builder(synthetic_root, out)
    with pytest.raises(MemoryBuildError, match='--resume'):
        again.prepare(resume=False, force=False)
    again.prepare(resume=True, force=False)
    again.encode_chunks(progress=False)
    again.merge()
    assert not osp.exists(str(out) + '.build')
    for bank in ('scene', 'object'):
        assert bank_digest(osp.join(out, bank)) == bank_digest(osp.join(synthetic_memory, bank))
    a, b = MemoryBank.load(osp.join(out, 'scene')), MemoryBank.load(
        osp.join(synthetic_memory, 'scene'))
    q = np.asarray(a.keys[:4]).copy()
    assert (a.search(q, 3)[1] == b.search(q, 3)[1]).all()


def test_sharded_build_then_merge_is_identical(synthetic_root, synthetic_memory, tmp_path):
    out = tmp_path / 'sharded'
    for i in range(2):
        builder = make_builder(synthetic_root, out)
        builder.prepare(resume=True, force=False)
        builder.encode_chunks(shard=parse_shard(f'{i}/2'), progress=False)
        if i == 0:
            with pytest.raises(MemoryBuildError, match='chunks missing'):
                builder.merge()
    make_builder(synthetic_root, out).merge()
    for bank in ('scene', 'object'):
        assert bank_digest(osp.join(out, bank)) == bank_digest(osp.join(synthetic_memory, bank))


def test_resume_with_another_plan_is_refused(synthetic_root, tmp_path):
    out = tmp_path / 'plan'
    builder = make_builder(synthetic_root, out)
    builder.prepare(resume=False, force=False)
    builder.encode_chunks(progress=False, max_chunks=1)
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root,
                                dict(OPTIONS, **{'memory.key_encoder.seed': 1}))
    other = MemoryBuilder(cfg, out=str(out), device='cpu')
    with pytest.raises(MemoryBuildError, match='key_encoder'):
        other.prepare(resume=True, force=False)
    other.prepare(resume=False, force=True)  # --force discards the partial build
    assert other.done_chunks() == []


def test_parse_shard():
    assert parse_shard('1/4') == (1, 4)
    for bad in ('4/4', 'a/b', '1'):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_build_memory_tool(synthetic_root, tmp_path):
    out = str(tmp_path / 'tool_memory')
    args = ['tools/build_memory.py', MEMORY_CFG, '--out', out, '--device', 'cpu',
            '--cfg-options', 'memory.build.num_workers=0']
    proc = run_tool(args, synthetic_root, cwd=REPO_ROOT)
    assert 'task/s' in proc.stdout and 'ETA' in proc.stdout, proc.stdout[-2000:]
    assert 'memory written to' in proc.stdout + proc.stderr
    memory = MemoryRoot(out)
    assert memory.object_bank.num_values > 0
    proc = run_tool(args, synthetic_root, cwd=REPO_ROOT)
    assert 'up to date' in proc.stdout + proc.stderr
    # query cache of the val split (keys only)
    proc = run_tool(['tools/build_memory.py', MEMORY_CFG, '--split', 'val', '--query-cache-only',
                     '--out', out + '_val', '--device', 'cpu',
                     '--cfg-options', 'memory.build.num_workers=0'], synthetic_root)
    assert len(MemoryRoot(out + '_val').query_cache) == 4
    manifest = json.load(open(osp.join(out + '_val', 'manifest.json')))
    assert manifest['banks'] == dict(scene=None, object=None)
    assert sorted(os.listdir(out + '_val')) == ['manifest.json', 'query_cache']
