"""MemoryBank / BankWriter / MemoryRetriever / QueryEmbeddingCache against FAISS flat search,
hashlib digests and hand gathers."""
import hashlib
import json
import os
import os.path as osp

import faiss
import numpy as np
import pytest
import torch

from mmmaps.memory import (BankWriter, MemoryBank, MemoryBankError, MemoryRetriever,
                           QueryEmbeddingCache)


def clustered_keys(num, dim, num_clusters, seed, noise=0.35):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_clusters, dim)).astype(np.float32)
    keys = centres[rng.integers(0, num_clusters, num)] + noise * rng.standard_normal(
        (num, dim)).astype(np.float32)
    return keys / np.linalg.norm(keys, axis=1, keepdims=True)


def fake_identity(name):
    """A real-looking content identity: the sha256 hex digest of some bytes."""
    return hashlib.sha256(f'picture {name}'.encode()).hexdigest()


def write_bank(path, keys, counts, value_dim=8, index=None, value_dtype='float32', seed=0,
               image_ids=None, identities=None):
    """Write an object-style bank in two add() calls; returns values, image ids, category ids
    and identities (hex str, one per image)."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((int(np.sum(counts)), value_dim)).astype(np.float32)
    image_ids = np.arange(100, 100 + len(keys)) if image_ids is None else np.asarray(image_ids)
    identities = ([fake_identity(i) for i in image_ids] if identities is None else
                  list(identities))
    cats = rng.integers(0, 13, len(values))
    writer = BankWriter(path, 'object', keys.shape[1], value_dim, value_dtype=value_dtype,
                        index=index, extra_fields=dict(category_ids='int32'))
    # several add() calls, as the builder streams chunks
    split = len(keys) // 2
    off = int(np.sum(counts[:split]))
    writer.add(keys[:split], values[:off], counts[:split], image_ids[:split],
               identities[:split], category_ids=cats[:off])
    writer.add(keys[split:], values[off:], counts[split:], image_ids[split:],
               identities[split:], category_ids=cats[off:])
    writer.commit(dict(source=dict(ann_file='x.json')))
    return values, image_ids, cats, identities


def test_bank_round_trip_and_csr(tmp_path):
    keys = clustered_keys(50, 16, 5, seed=0)
    counts = np.random.default_rng(1).integers(0, 4, 50)
    values, image_ids, cats, identities = write_bank(str(tmp_path / 'bank'), keys, counts)
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
    # content identities: one 64-byte ASCII hex digest per row, in the order written
    assert manifest['format_version'] == 2
    assert bank.identities.dtype == np.dtype('S64') and bank.identities.shape == (50,)
    assert bank.identities.tolist() == [i.encode('ascii') for i in identities]
    identity_file = str(tmp_path / 'bank' / 'image_sha256.npy')
    assert np.load(identity_file, allow_pickle=False).tolist() == bank.identities.tolist()
    assert manifest['files']['image_sha256.npy']['sha256'] == hashlib.sha256(
        open(identity_file, 'rb').read()).hexdigest()
    for row in (0, 17, 49):
        assert bank.rows_of_identity(identities[row].encode()) == [row]
    assert bank.rows_of_identity(fake_identity('not in the bank').encode()) == []


def test_writer_accepts_bytes_identities(tmp_path):
    keys = clustered_keys(4, 8, 1, seed=0)
    digests = [hashlib.sha256(bytes([i])).hexdigest() for i in range(4)]
    writer = BankWriter(str(tmp_path / 'b'), 'scene', 8, 8)
    writer.add(keys[:2], keys[:2], [1, 1], [1, 2], digests[:2])  # str
    writer.add(keys[2:], keys[2:], [1, 1], [3, 4], [d.encode() for d in digests[2:]])  # bytes
    writer.commit()
    assert MemoryBank.load(str(tmp_path / 'b')).identities.tolist() == [
        d.encode() for d in digests]


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
    _, _, _, identities = write_bank(str(tmp_path / 'bank'), keys, np.ones(400, int))
    bank = MemoryBank.load(str(tmp_path / 'bank'))  # default HNSW index, as the builder
    retriever = MemoryRetriever(bank)
    own = [i.encode() for i in identities]
    q = torch.from_numpy(keys)
    res = retriever.query(q, 5, exclude=own)
    rows = res.rows.numpy()
    assert rows.shape == (400, 5) and (rows >= 0).all() and not res.scene_mask.any()
    retrieved_identities = bank.identities[rows]
    assert not (retrieved_identities == np.asarray(own, dtype='S64')[:, None]).any()
    np.testing.assert_array_equal(res.image_ids.numpy(), bank.image_ids[rows])
    # without the guard an exact duplicate key retrieves itself first
    res0 = retriever.query(q, 5)
    assert (res0.rows[:, 0].numpy() == np.arange(400)).mean() > 0.95
    assert (res0.image_ids[:, 0].numpy() == bank.image_ids).mean() > 0.95
    # the guard keeps the remaining order (and scores) of the unguarded k + 1 ranking
    res6 = retriever.query(q, 6)
    for b in range(400):
        keep = [j for j, r in enumerate(res6.rows[b].tolist()) if r != b][:5]
        assert res.rows[b].tolist() == res6.rows[b, keep].tolist(), b
        np.testing.assert_array_equal(res.scores[b].numpy(), res6.scores[b, keep].numpy())
    # None excludes nothing for its query; an identity the bank does not hold neither
    mixed = retriever.query(q[:4], 5, exclude=[None, own[1], fake_identity('elsewhere').encode(),
                                               own[3]])
    assert mixed.rows[[0, 2]].tolist() == res0.rows[[0, 2]].tolist()
    assert mixed.rows[[1, 3]].tolist() == res.rows[[1, 3]].tolist()
    with pytest.raises(ValueError, match='identities to exclude'):
        retriever.query(q[:4], 5, exclude=own[:3])


def test_leak_guard_excludes_every_row_of_an_identity(tmp_path):
    """A picture appended twice under different ids (same key, same identity): a query of
    that picture must retrieve neither copy, and still fill its k slots."""
    keys = clustered_keys(120, 16, 4, seed=9)
    copies = {120: 7, 121: 30}  # renumbered duplicates: row -> row of the same picture
    keys = np.concatenate([keys, keys[list(copies.values())]])
    image_ids = np.concatenate([np.arange(100, 220), [5000, 5001]])
    identities = [fake_identity(i) for i in range(120)] + [fake_identity(7), fake_identity(30)]
    path = str(tmp_path / 'dup')
    write_bank(path, keys, np.ones(122, int), image_ids=image_ids, identities=identities,
               index=dict(type='Flat'))
    bank = MemoryBank.load(path)
    assert bank.rows_of_identity(identities[7].encode()) == [7, 120]
    assert bank.rows_of_identity(identities[30].encode()) == [30, 121]
    retriever = MemoryRetriever(bank)
    own = [i.encode() for i in identities]
    k = 5
    res = retriever.query(torch.from_numpy(keys), k, exclude=own)
    # reference: exact FAISS search over the raw keys, rows of the own picture removed by hand
    exact = faiss.IndexFlatIP(16)
    exact.add(keys)
    _, truth = exact.search(keys, k + 2)
    for b in range(len(keys)):
        same_picture = {r for r, i in enumerate(identities) if i == identities[b]}
        expected = [r for r in truth[b].tolist() if r not in same_picture][:k]
        assert len(expected) == k
        assert res.rows[b].tolist() == expected, b
    for b in (7, 120, 30, 121):
        same_picture = {7, 120} if b in (7, 120) else {30, 121}
        assert not same_picture & set(res.rows[b].tolist()), (b, res.rows[b])
    assert not res.scene_mask.any()
    # unguarded, each copy retrieves both copies first (score 1)
    res0 = retriever.query(torch.from_numpy(keys[[7, 120]]), k)
    assert [set(r[:2]) for r in res0.rows.tolist()] == [{7, 120}, {7, 120}]
    assert set(res0.image_ids[0, :2].tolist()) == {107, 5000}
    # excluding picture 7 from another query removes both of its rows from that ranking
    other = retriever.query(torch.from_numpy(keys[[7]]), k, exclude=[own[30]])
    assert other.rows[0, :2].tolist() == res0.rows[0, :2].tolist()
    assert not {30, 121} & set(other.rows[0].tolist())


def test_retrieval_gathers_objects_in_rank_order(tmp_path):
    keys = clustered_keys(30, 16, 3, seed=6)
    counts = np.random.default_rng(7).integers(0, 5, 30)
    counts[0] = 0  # an image without objects
    values, image_ids, cats, _ = write_bank(str(tmp_path / 'obj'), keys, counts)
    bank = MemoryBank.load(str(tmp_path / 'obj'))
    retriever = MemoryRetriever(bank, bank, max_objects=9)
    res = retriever.query(torch.from_numpy(keys[:6]), 4)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    assert res.object_values.shape[1] <= 9
    assert 0 in res.rows[0].tolist(), 'the image without objects must be among the retrieved'
    for b in range(6):
        rows = [int(np.where(image_ids == i)[0][0]) for i in res.image_ids[b].tolist()]
        assert res.rows[b].tolist() == rows
        np.testing.assert_allclose(res.scores[b].numpy(), keys[rows] @ keys[b], atol=1e-5)
        expect = np.concatenate([values[offsets[r]:offsets[r + 1]] for r in rows])[:9]
        expect_cats = np.concatenate([cats[offsets[r]:offsets[r + 1]] for r in rows])[:9]
        expect_owners = np.concatenate([[image_ids[r]] * counts[r] for r in rows])[:9]
        n = len(expect)
        assert (~res.object_mask[b]).sum() == n
        np.testing.assert_allclose(res.object_values[b, :n].numpy(), expect, atol=0)
        np.testing.assert_array_equal(res.object_category_ids[b, :n].numpy(), expect_cats)
        np.testing.assert_array_equal(res.object_image_ids[b, :n].numpy(), expect_owners)
        assert (res.object_values[b, n:] == 0).all() and res.object_mask[b, n:].all()
        assert (res.object_category_ids[b, n:] == -1).all()
        # scene memory of a per-segment bank is the first value of each image (zeros for an
        # image without values, which is still a retrieved image, not a padded slot)
        for j, r in enumerate(rows):
            first = values[offsets[r]] if counts[r] else np.zeros(values.shape[1], np.float32)
            np.testing.assert_array_equal(res.scene_values[b, j].numpy(), first)
        assert not res.scene_mask[b].any()
    fixed = MemoryRetriever(bank, bank, max_objects=9, pad_objects_to_max=True)
    assert fixed.query(torch.from_numpy(keys[:2]), 4).object_mask.shape == (2, 9)
    assert retriever.query(torch.from_numpy(keys[:2]), 4, with_objects=False).object_values \
        is None


def test_objects_of_another_bank_are_gathered_by_image_id(tmp_path):
    """Object bank rows in another order than the scene bank's: objects follow the image id."""
    keys = clustered_keys(20, 8, 2, seed=3)
    image_ids = np.arange(100, 120)
    identities = [fake_identity(i) for i in image_ids]
    write_bank(str(tmp_path / 'scene'), keys, np.ones(20, int), image_ids=image_ids,
               identities=identities, seed=1)
    perm = np.random.default_rng(4).permutation(20)
    counts = np.random.default_rng(5).integers(1, 4, 20)
    values, _, cats, _ = write_bank(str(tmp_path / 'obj'), keys[perm], counts,
                                    image_ids=image_ids[perm],
                                    identities=[identities[p] for p in perm], seed=2)
    scene = MemoryBank.load(str(tmp_path / 'scene'))
    objects = MemoryBank.load(str(tmp_path / 'obj'))
    res = MemoryRetriever(scene, objects, max_objects=50).query(torch.from_numpy(keys[:3]), 3)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for b in range(3):
        obj_rows = [int(np.flatnonzero(perm == r)[0]) for r in res.rows[b].tolist()]
        expect = np.concatenate([values[offsets[o]:offsets[o + 1]] for o in obj_rows])
        n = len(expect)
        np.testing.assert_array_equal(res.object_values[b, :n].numpy(), expect)
        np.testing.assert_array_equal(res.object_image_ids[b, :n].numpy(),
                                      np.repeat(res.image_ids[b].numpy(), counts[obj_rows]))
        assert res.object_mask[b, n:].all() and not res.object_mask[b, :n].any()


def test_bank_smaller_than_k_is_padded(tmp_path):
    keys = clustered_keys(3, 8, 1, seed=0)
    write_bank(str(tmp_path / 'b'), keys, np.ones(3, int))
    bank = MemoryBank.load(str(tmp_path / 'b'))
    res = MemoryRetriever(bank, bank).query(torch.from_numpy(keys[:1]), 5,
                                            exclude=[bank.identities[0]])
    assert res.scene_mask.tolist() == [[False, False, True, True, True]]
    assert res.image_ids[0, 2:].tolist() == [-1, -1, -1]
    assert res.rows[0, 2:].tolist() == [-1, -1, -1] and 0 not in res.rows[0].tolist()
    assert (res.scene_values[0, 2:] == 0).all() and (res.scores[0, 2:] == 0).all()


def _flat_bank_for_sampling(tmp_path):
    keys = clustered_keys(200, 16, 4, seed=8)
    _, _, _, identities = write_bank(str(tmp_path / 'b'), keys, np.ones(200, int),
                                     index=dict(type='Flat'))
    bank = MemoryBank.load(str(tmp_path / 'b'))
    # reference: exact FAISS ranking of the first 4 keys without their own row
    exact = faiss.IndexFlatIP(16)
    exact.add(keys)
    _, truth = exact.search(keys[:4], 11)
    top = [[r for r in truth[b].tolist() if r != b][:10] for b in range(4)]
    return keys, bank, [i.encode() for i in identities[:4]], top


def test_random_sampling_draws_from_top_k_prime(tmp_path):
    keys, bank, own, top = _flat_bank_for_sampling(tmp_path)
    retriever = MemoryRetriever(bank)
    q = torch.from_numpy(keys[:4])
    rng = np.random.default_rng(0)
    drawn = np.zeros((4, 200), int)
    draws = set()
    for _ in range(100):
        res = retriever.query(q, 3, exclude=own, sample_from=10, rng=rng)
        for b in range(4):
            got = res.rows[b].tolist()
            assert len(set(got)) == 3 and set(got) <= set(top[b]), (got, top[b])
            assert got == sorted(got, key=top[b].index), 'draws keep their rank order'
            np.testing.assert_allclose(res.scores[b].numpy(), keys[got] @ keys[b], atol=1e-5)
            drawn[b, got] += 1
        draws.add(tuple(res.rows[0].tolist()))
    assert len(draws) > 1
    # uniform over the top-k': each of the 10 drawn about 3 / 10 of the 100 times
    for b in range(4):
        assert all(10 <= drawn[b, r] <= 55 for r in top[b]), drawn[b, top[b]]
        assert drawn[b].sum() == 300
    # without k' the top-k is deterministic
    res = retriever.query(q, 3, exclude=own)
    assert res.rows.tolist() == [t[:3] for t in top]
    with pytest.raises(ValueError, match="k'"):
        retriever.query(q, 3, exclude=own, sample_from=3, rng=rng)
    with pytest.raises(ValueError, match='generator'):
        retriever.query(q, 3, exclude=own, sample_from=10)


def test_random_sampling_is_reproducible_with_a_seeded_generator(tmp_path):
    keys, bank, own, top = _flat_bank_for_sampling(tmp_path)
    q = torch.from_numpy(keys[:4])

    def draw(seed, times=4):
        retriever = MemoryRetriever(bank)  # a fresh retriever: the generator is all the state
        rng = np.random.default_rng(seed)
        return [retriever.query(q, 3, exclude=own, sample_from=10, rng=rng).rows.tolist()
                for _ in range(times)]

    first = draw(7)
    assert draw(7) == first
    assert draw(8) != first
    assert len({str(d) for d in first}) > 1, 'consecutive draws of one generator differ'
    assert all(set(row) <= set(t) for d in first for row, t in zip(d, top))


def test_interrupted_write_leaves_nothing(tmp_path):
    keys = clustered_keys(10, 8, 2, seed=0)
    identities = [fake_identity(i) for i in range(10)]
    writer = BankWriter(str(tmp_path / 'bank'), 'scene', 8, 8)
    writer.add(keys, keys, np.ones(10, int), np.arange(10), identities)
    writer.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match='duplicate image ids'):
        w = BankWriter(str(tmp_path / 'bank'), 'scene', 8, 8)
        w.add(keys, keys, np.ones(10, int), np.zeros(10, int), identities)
        w.commit()
    assert os.listdir(tmp_path) == []
    # identities must be sha256 hex digests, one per key
    w = BankWriter(str(tmp_path / 'bank'), 'scene', 8, 8)
    sha1 = [hashlib.sha1(str(i).encode()).hexdigest() for i in range(10)]
    with pytest.raises(ValueError, match='64-character sha256'):
        w.add(keys, keys, np.ones(10, int), np.arange(10), sha1)
    with pytest.raises(ValueError, match='identities'):
        w.add(keys, keys, np.ones(10, int), np.arange(10), identities[:9])
    w.abort()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'manifest', 'index', 'missing',
                                    'identities'])
def test_damaged_bank_fails_naming_the_file(tmp_path, damage):
    keys = clustered_keys(20, 8, 2, seed=0)
    path = str(tmp_path / 'bank')
    write_bank(path, keys, np.full(20, 2))
    target = {'truncate': 'values.bin', 'flip': 'keys.npy', 'manifest': 'manifest.json',
              'index': 'index.faiss', 'missing': 'offsets.npy',
              'identities': 'image_sha256.npy'}[damage]
    file_path = osp.join(path, target)
    if damage == 'truncate':
        with open(file_path, 'r+b') as f:
            f.truncate(osp.getsize(file_path) - 7)
    elif damage in ('flip', 'identities'):
        data = bytearray(open(file_path, 'rb').read())
        data[-3] ^= 0x01  # one hex digit of the last identity / one bit of a key
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


@pytest.mark.parametrize('layout', ['version1', 'missing_listed', 'missing_unlisted'])
def test_bank_without_identities_is_refused_with_rebuild_hint(tmp_path, layout):
    """A bank of format 1 (no content identities) cannot serve the leak guard: refused."""
    path = str(tmp_path / 'bank')
    write_bank(path, clustered_keys(10, 8, 2, seed=0), np.ones(10, int))
    os.remove(osp.join(path, 'image_sha256.npy'))
    manifest_path = osp.join(path, 'manifest.json')
    manifest = json.load(open(manifest_path))
    if layout != 'missing_listed':  # what a version-1 bank looks like
        del manifest['files']['image_sha256.npy']
    if layout == 'version1':
        manifest['format_version'] = 1
    json.dump(manifest, open(manifest_path, 'w'))
    for verify in (True, False):
        with pytest.raises(MemoryBankError) as info:
            MemoryBank.load(path, verify=verify)
        message = str(info.value)
        assert 'rebuild' in message, message
        if layout == 'version1':
            assert 'format version 1' in message, message
        else:
            assert 'image_sha256.npy' in message, message


def test_query_cache_serves_keys_by_identity(tmp_path):
    keys = clustered_keys(6, 8, 2, seed=1)
    identities = [fake_identity(f'query {i}') for i in range(6)]
    image_ids = [1, 2, 3, 1, 2, 3]  # ids of two annotation files collide; pictures do not
    path = str(tmp_path / 'qc')
    QueryEmbeddingCache.write(path, keys, image_ids, identities, meta=dict(note='test'))
    cache = QueryEmbeddingCache.load(path)
    assert len(cache) == 6 and cache.manifest['note'] == 'test'
    assert cache.identities.tolist() == [i.encode() for i in identities]
    assert cache.identities.dtype == np.dtype('S64')
    assert identities[4] in cache and identities[4].encode() in cache
    assert fake_identity('unknown') not in cache
    got, found = cache.lookup([identities[4], identities[0].encode(), fake_identity('unknown'),
                               None, identities[3]])
    assert found == [True, True, False, False, True]
    assert got.dtype == torch.float32 and got.shape == (5, 8)
    np.testing.assert_array_equal(
        got.numpy(), np.stack([keys[4], keys[0], np.zeros(8), np.zeros(8), keys[3]]))
    with pytest.raises(ValueError, match='sha256'):
        QueryEmbeddingCache.write(str(tmp_path / 'bad'), keys, image_ids, ['0' * 40] * 6)
    assert not osp.exists(tmp_path / 'bad')
    # a cache of format 1 (served by image id) is refused with a rebuild hint
    manifest = json.load(open(osp.join(path, 'manifest.json')))
    manifest['format_version'] = 1
    json.dump(manifest, open(osp.join(path, 'manifest.json'), 'w'))
    with pytest.raises(MemoryBankError, match='format version 1.*rebuild'):
        QueryEmbeddingCache.load(path)
