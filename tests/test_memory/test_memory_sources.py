"""Which memory a model reads: a memory of another dataset (``memory.dataset_config``, the
paper's COCO memory for ADE20K and Cityscapes) and a deliberately wrong memory
(``memory.retrieval.wrong_memory_prob``: robustness training and the shuffled control)."""
import hashlib
import json
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

from mmmaps.memory import MemoryBankError, build_external_memory

from ..conftest import MEMORY_CFG, load_config_with_root, load_tool


def sha256_of(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_rgb(path):
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert('RGB'))).permute(2, 0, 1).float()


def scene_bank(root):
    scene = osp.join(root, 'scene')
    with open(osp.join(root, 'manifest.json')) as f:
        manifest = json.load(f)
    return dict(keys=np.load(osp.join(scene, 'keys.npy')).astype(np.float32),
                image_ids=np.load(osp.join(scene, 'image_ids.npy')),
                identities=[i.decode() for i in np.load(osp.join(scene, 'image_sha256.npy'))],
                manifest=manifest)


def exact_top_k(bank, key, k, exclude=None):
    """Image ids of the k entries nearest to ``key`` (brute force), skipping ``exclude``."""
    scores = bank['keys'] @ np.asarray(key, dtype=np.float32)
    order = [r for r in np.argsort(-scores, kind='stable') if bank['identities'][r] != exclude]
    return [int(bank['image_ids'][r]) for r in order[:k]]


def train_files(root):
    with open(osp.join(root, 'annotations', 'panoptic_train.json')) as f:
        return [osp.join(root, 'train', im['file_name']) for im in json.load(f)['images']]


def write_config(path, data_root, memory=None):
    lines = [f'_base_ = {MEMORY_CFG!r}',
             f'train_dataloader = dict(dataset=dict(data_root={data_root!r}))']
    if memory:
        lines.append(f'memory = {memory!r}')
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def test_memory_of_another_dataset_is_built_from_its_config_and_read_like_an_own(tmp_path):
    from mmmaps.datasets import generate_synthetic_panoptic
    from mmmaps.memory.config_schema import MemoryConfigError
    other, own = str(tmp_path / 'other') + '/', str(tmp_path / 'own') + '/'
    generate_synthetic_panoptic(other, num_train=5, num_val=1, seed=31, size=(64, 64),
                                progress=False)
    generate_synthetic_panoptic(own, num_train=3, num_val=1, seed=32, size=(64, 64),
                                progress=False)
    build_options = dict(build=dict(chunk_size=8, num_workers=0))
    other_cfg = write_config(tmp_path / 'other_memory.py', other)
    foreign_root = str(tmp_path / 'memory_of_other')
    own_cfg = write_config(tmp_path / 'maps_own_data.py', own, dict(
        root=foreign_root, dataset_config=other_cfg, **build_options))
    build = load_tool('tools/build_memory.py').main

    build([own_cfg, '--device', 'cpu'])
    bank = scene_bank(foreign_root)
    assert bank['manifest']['source']['ann_file'] == osp.join(
        other, 'annotations', 'panoptic_train.json')
    assert sorted(bank['identities']) == sorted(sha256_of(p) for p in train_files(other))
    # the same banks as the other dataset's own config builds
    reference_root = str(tmp_path / 'built_by_other')
    build([other_cfg, '--device', 'cpu', '--out', reference_root,
           '--cfg-options', 'memory.build.num_workers=0'])
    reference = scene_bank(reference_root)
    assert reference['image_ids'].tolist() == bank['image_ids'].tolist()
    np.testing.assert_array_equal(reference['keys'], bank['keys'])
    # a rebuild with the same config is up to date (nothing re-encoded)
    manifest = osp.join(foreign_root, 'manifest.json')
    before = osp.getmtime(manifest)
    build([own_cfg, '--device', 'cpu'])
    assert osp.getmtime(manifest) == before
    # no query cache of this config's val split next to the other dataset's memory
    with pytest.raises(MemoryConfigError, match='indexes another dataset'):
        build([own_cfg, '--device', 'cpu', '--split', 'val'])
    missing = write_config(tmp_path / 'missing.py', own, dict(
        root=foreign_root, dataset_config=str(tmp_path / 'nope.py')))
    with pytest.raises(MemoryConfigError, match='nope.py does not exist'):
        build([missing, '--device', 'cpu'])

    # read like an own memory: the leak guard by content finds none of this dataset's
    # pictures; the audit names what the memory indexes
    cfg = load_config_with_root(own_cfg, own)
    memory = build_external_memory(cfg.memory, device='cpu')
    assert memory.in_memory(train_files(own)) == [False] * 3
    report = load_tool('tools/analysis/audit_memory.py').audit(cfg, 'train', device='cpu')
    assert report['memory_indexes'] == bank['manifest']['source']['ann_file']
    assert report['memory_dataset_config'] == other_cfg
    assert report['query_keys'] == 'model_input'
    assert (report['images'], report['in_memory'], report['self_retrievals']) == (3, 0, 0)


def wrong_memory(root, memory_root, **retrieval):
    cfg = load_config_with_root(MEMORY_CFG, root, {'memory.root': memory_root})
    cfg.memory.retrieval.update(retrieval)
    return build_external_memory(cfg.memory, device='cpu')


def test_wrong_memory_gives_each_image_another_images_retrieval(synthetic_root,
                                                                synthetic_memory):
    bank = scene_bank(synthetic_memory)
    paths = train_files(synthetic_root)[:3]
    images = [read_rgb(p) for p in paths]
    own = [sha256_of(p) for p in paths]
    own_rows = [bank['identities'].index(o) for o in own]
    memory = wrong_memory(synthetic_root, synthetic_memory, wrong_memory_prob=1.0)
    substitutes = set()
    for _ in range(5):
        result = memory.retrieve(images, paths, training=True)
        for b in range(3):
            row = int(result.rows[b, 0])  # the substitute's own entry comes first
            assert bank['identities'][row] != own[b]
            assert float(result.scores[b, 0]) == pytest.approx(1.0, abs=1e-4)
            assert result.image_ids[b].tolist() == exact_top_k(bank, bank['keys'][row],
                                                               memory.k, exclude=own[b])
            # the image's own key stays its key (Aug-CLS reads it)
            np.testing.assert_allclose(result.query_keys[b].numpy(), bank['keys'][own_rows[b]],
                                       atol=1e-5)
            substitutes.add(row)
    assert len(substitutes) > 3  # drawn at random, not one fixed neighbour
    # evaluation: the true retrieval unless wrong_memory_at_test
    result = memory.retrieve(images, paths, training=False)
    assert [bank['identities'][int(r)] for r in result.rows[:, 0]] == own
    # p = 0.5: about half of the draws differ from the true (own picture excluded) retrieval;
    # a substitute gives the same rows only when it is the true top-1 (1 in 7 here)
    true_rows = wrong_memory(synthetic_root, synthetic_memory).retrieve(
        images[:1], paths[:1], training=True).rows[0].tolist()
    half = wrong_memory(synthetic_root, synthetic_memory, wrong_memory_prob=0.5)
    differ = [half.retrieve(images[:1], paths[:1], training=True).rows[0].tolist() != true_rows
              for _ in range(40)]
    assert 7 <= sum(differ) <= 30  # expected 40 * 0.5 * 6/7 = 17
    with pytest.raises(MemoryBankError, match=r'wrong_memory_prob must be in \[0, 1\]'):
        wrong_memory(synthetic_root, synthetic_memory, wrong_memory_prob=1.5)


def test_shuffled_memory_at_test_is_fixed_per_image(synthetic_root, synthetic_memory):
    """The shuffled-memory control: at evaluation too, and each image's substitute depends
    on its content and the seed, not on the batch it is in."""
    bank = scene_bank(synthetic_memory)
    paths = train_files(synthetic_root)[:4]
    images = [read_rgb(p) for p in paths]
    memory = wrong_memory(synthetic_root, synthetic_memory, wrong_memory_prob=1.0,
                          wrong_memory_at_test=True)
    first = memory.retrieve(images, paths, training=False).rows[:, 0].tolist()
    assert all(bank['identities'][r] != sha256_of(p) for r, p in zip(first, paths))
    again = memory.retrieve(images[::-1], paths[::-1], training=False).rows[:, 0].tolist()
    assert again[::-1] == first
