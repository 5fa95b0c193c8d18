"""MemoryBank / BankWriter / MemoryRetriever against FAISS flat search and hand gathers."""
import json
import os
import os.path as osp

import faiss
import numpy as np
import pytest
import torch

from mmmaps.memory import BankWriter, MemoryBank, MemoryBankError, MemoryRetriever


def clustered_keys(num, dim, num_clusters, seed, noise=0.35):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_clusters, dim)).astype(np.float32)
    keys = centres[rng.integers(0, num_clusters, num)] + noise * rng.standard_normal(
        (num, dim)).astype(np.float32)
    return keys / np.linalg.norm(keys, axis=1, keepdims=True)


def write_bank(path, keys, counts, value_dim=8, index=None, value_dtype='float32', seed=0,
               image_ids=None):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((int(np.sum(counts)), value_dim)).astype(np.float32)
    image_ids = np.arange(100, 100 + len(keys)) if image_ids is None else image_ids
    cats = rng.integers(0, 13, len(values))
    writer = BankWriter(path, 'object', keys.shape[1], value_dim, value_dtype=value_dtype,
                        index=index, extra_fields=dict(category_ids='int32'))
    # several add() calls, as the builder streams chunks
    split = len(keys) // 2
    off = int(np.sum(counts[:split]))
    writer.add(keys[:split], values[:off], counts[:split], image_ids[:split],
               category_ids=cats[:off])
    writer.add(keys[split:], values[off:], counts[split:], image_ids[split:],
               category_ids=cats[off:])
    writer.commit(dict(source=dict(ann_file='x.json')))
    return values, image_ids, cats


def test_bank_round_trip_and_csr(tmp_path):
    keys = clustered_keys(50, 16, 5, seed=0)
    counts = np.random.default_rng(1).integers(0, 4, 50)
    values, image_ids, cats = write_bank(str(tmp_path / 'bank'), keys, counts)
    bank = MemoryBank.load(str(tmp_path / 'bank'))
    assert bank.num_entries == 50 and bank.num_values == counts.sum()
    np.testing.assert_array_equal(bank.keys, keys)
    np.testing.assert_array_equal(bank.image_ids, image_ids)
    start = 0
    for row, count in enumerate(counts):
        np.testing.assert_array_equal(bank.values_of(row), values[start:start + count])
        np.testing.assert_array_equal(bank.extras['category_ids'][bank.value_slice(row)],
                                      cats[start:start + count])
        start += count
    manifest = json.load(open(tmp_path / 'bank' / 'manifest.json'))
    assert manifest['image_ids'] == image_ids.tolist()
    assert manifest['metric'] == 'inner_product' and manifest['source']['ann_file'] == 'x.json'
    assert not [n for n in os.listdir(tmp_path) if n.startswith('.')], 'temp dirs left behind'


def test_hnsw_recall_against_flat(tmp_path):
    keys = clustered_keys(10000, 32, 200, seed=2)
    write_bank(str(tmp_path / 'hnsw'), keys, np.ones(len(keys), int),
               index=dict(type='HNSW', M=32, ef_search=128))
    bank = MemoryBank.load(str(tmp_path / 'hnsw'), verify=False)
    queries = clustered_keys(500, 32, 200, seed=2)[:500] + 0.0
    queries = (queries + 0.1 * np.random.default_rng(3).standard_normal(queries.shape)).astype(
        np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(32)
    exact.add(keys)
    _, truth = exact.search(queries, 5)
    _, rows = bank.search(queries, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(rows, truth)])
    assert recall >= 0.95, recall


def test_flat_index_is_exact(tmp_path):
    keys = clustered_keys(300, 16, 10, seed=4)
    write_bank(str(tmp_path / 'flat'), keys, np.ones(300, int), index=dict(type='Flat'))
    bank = MemoryBank.load(str(tmp_path / 'flat'))
    scores, rows = bank.search(keys[:20], 3)
    brute = keys[:20] @ keys.T
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :3], atol=1e-5)


def test_ivfpq_needs_enough_keys(tmp_path):
    keys = clustered_keys(100, 16, 4, seed=0)
    with pytest.raises(ValueError, match='needs at least'):
        write_bank(str(tmp_path / 'ivf'), keys, np.ones(100, int),
                   index=dict(type='IVFPQ', nlist=64, m=4))
    assert not osp.exists(tmp_path / 'ivf')
    write_bank(str(tmp_path / 'ivf'), clustered_keys(2000, 16, 8, seed=0),
               np.ones(2000, int), index=dict(type='IVFPQ', nlist=16, m=4, nprobe=16))
    bank = MemoryBank.load(str(tmp_path / 'ivf'))
    _, rows = bank.search(bank.keys[:10].copy(), 1)
    assert (rows[:, 0] >= 0).all()


def test_leak_guard_never_returns_self(tmp_path):
    keys = clustered_keys(400, 16, 8, seed=5)
    write_bank(str(tmp_path / 'bank'), keys, np.ones(400, int))
    bank = MemoryBank.load(str(tmp_path / 'bank'))
    ids = bank.image_ids
    guarded = MemoryRetriever(bank, k=5, exclude_self=True)
    unguarded = MemoryRetriever(bank, k=5, exclude_self=False)
    q = torch.from_numpy(keys)
    res = guarded.query(q, image_ids=ids)
    assert not (res.image_ids == torch.from_numpy(ids)[:, None]).any()
    assert not res.scene_mask.any()
    # without the guard an exact duplicate key retrieves itself first
    res0 = unguarded.query(q, image_ids=ids)
    assert (res0.image_ids[:, 0] == torch.from_numpy(ids)).float().mean() > 0.95
    # the guard keeps the remaining order of the unguarded ranking
    res6 = unguarded.query(q, k=6)
    for b in range(0, 400, 37):
        expected = [i for i in res6.image_ids[b].tolist() if i != ids[b]][:5]
        assert res.image_ids[b].tolist() == expected


def test_retrieval_gathers_objects_in_rank_order(tmp_path):
    keys = clustered_keys(30, 16, 3, seed=6)
    counts = np.random.default_rng(7).integers(0, 5, 30)
    counts[0] = 0  # an image without objects
    values, image_ids, cats = write_bank(str(tmp_path / 'obj'), keys, counts)
    bank = MemoryBank.load(str(tmp_path / 'obj'))
    retriever = MemoryRetriever(bank, bank, k=4, max_objects=9)
    res = retriever.query(torch.from_numpy(keys[:6]))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    assert res.object_values.shape[1] <= 9
    for b in range(6):
        rows = [int(np.where(image_ids == i)[0][0]) for i in res.image_ids[b].tolist()]
        expect = np.concatenate([values[offsets[r]:offsets[r + 1]] for r in rows])[:9]
        expect_cats = np.concatenate([cats[offsets[r]:offsets[r + 1]] for r in rows])[:9]
        n = len(expect)
        assert (~res.object_mask[b]).sum() == n
        np.testing.assert_allclose(res.object_values[b, :n].numpy(), expect, atol=0)
        np.testing.assert_array_equal(res.object_category_ids[b, :n].numpy(), expect_cats)
        assert (res.object_values[b, n:] == 0).all() and res.object_mask[b, n:].all()
        # scene memory of a per-segment bank is the first value of each image
    fixed = MemoryRetriever(bank, bank, k=4, max_objects=9, pad_objects_to_max=True)
    assert fixed.query(torch.from_numpy(keys[:2])).object_mask.shape == (2, 9)


def test_bank_smaller_than_k_is_padded(tmp_path):
    keys = clustered_keys(3, 8, 1, seed=0)
    write_bank(str(tmp_path / 'b'), keys, np.ones(3, int))
    bank = MemoryBank.load(str(tmp_path / 'b'))
    res = MemoryRetriever(bank, bank, k=5, exclude_self=True).query(
        torch.from_numpy(keys[:1]), image_ids=bank.image_ids[:1])
    assert res.scene_mask.tolist() == [[False, False, True, True, True]]
    assert res.image_ids[0, 2:].tolist() == [-1, -1, -1]


def test_random_sampling_draws_from_top_k_prime(tmp_path):
    keys = clustered_keys(200, 16, 4, seed=8)
    write_bank(str(tmp_path / 'b'), keys, np.ones(200, int), index=dict(type='Flat'))
    bank = MemoryBank.load(str(tmp_path / 'b'))
    retriever = MemoryRetriever(bank, k=3, random_sampling=10, exclude_self=True, seed=0)
    q = torch.from_numpy(keys[:4])
    top = MemoryRetriever(bank, k=10, exclude_self=True).query(q, image_ids=bank.image_ids[:4])
    draws = set()
    for _ in range(20):
        res = retriever.query(q, image_ids=bank.image_ids[:4], training=True)
        for b in range(4):
            assert set(res.image_ids[b].tolist()) <= set(top.image_ids[b].tolist())
            assert len(set(res.image_ids[b].tolist())) == 3
        draws.add(tuple(res.image_ids[0].tolist()))
    assert len(draws) > 1
    # deterministic top-k at test time
    res = retriever.query(q, image_ids=bank.image_ids[:4], training=False)
    assert res.image_ids.tolist() == top.image_ids[:, :3].tolist()
    # a per-call k' (the head's random_sampling) overrides the configured one
    plain = MemoryRetriever(bank, k=3, exclude_self=True, seed=0)
    assert plain.query(q, image_ids=bank.image_ids[:4], training=True).image_ids.tolist() == \
        top.image_ids[:, :3].tolist()
    sampled = {tuple(plain.query(q, image_ids=bank.image_ids[:4], training=True,
                                 random_sampling=10).image_ids[0].tolist()) for _ in range(20)}
    assert len(sampled) > 1 and all(set(s) <= set(top.image_ids[0].tolist()) for s in sampled)
    with pytest.raises(ValueError, match="k'"):
        plain.query(q, training=True, random_sampling=3)


def test_interrupted_write_leaves_nothing(tmp_path):
    keys = clustered_keys(10, 8, 2, seed=0)
    writer = BankWriter(str(tmp_path / 'bank'), 'scene', 8, 8)
    writer.add(keys, keys, np.ones(10, int), np.arange(10))
    writer.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match='duplicate image ids'):
        w = BankWriter(str(tmp_path / 'bank'), 'scene', 8, 8)
        w.add(keys, keys, np.ones(10, int), np.zeros(10, int))
        w.commit()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'manifest', 'index', 'missing'])
def test_damaged_bank_fails_naming_the_file(tmp_path, damage):
    keys = clustered_keys(20, 8, 2, seed=0)
    path = str(tmp_path / 'bank')
    write_bank(path, keys, np.full(20, 2))
    target = {'truncate': 'values.bin', 'flip': 'keys.npy', 'manifest': 'manifest.json',
              'index': 'index.faiss', 'missing': 'offsets.npy'}[damage]
    file_path = osp.join(path, target)
    if damage == 'truncate':
        with open(file_path, 'r+b') as f:
            f.truncate(osp.getsize(file_path) - 7)
    elif damage == 'flip':
        data = bytearray(open(file_path, 'rb').read())
        data[-3] ^= 0xFF
        open(file_path, 'wb').write(bytes(data))
    elif damage == 'manifest':
        os.remove(file_path)
    elif damage == 'index':
        data = bytearray(open(file_path, 'rb').read())
        data[:16] = b'\0' * 16
        open(file_path, 'wb').write(bytes(data))
    else:
        os.remove(file_path)
    with pytest.raises(MemoryBankError, match=target.replace('.', r'\.')):
        MemoryBank.load(path)
    if damage == 'index':
        # without checksums the FAISS reader itself must fail with the file name
        with pytest.raises(MemoryBankError, match='index.faiss'):
            MemoryBank.load(path, verify=False)
