"""Memory query latency and recall: HNSW vs exact flat search (and IVF-PQ) at 10k/100k keys.

    python benchmarks/memory_query.py [--sizes 10000 100000] [--dim 512] [--batch 8]

Keys are random-but-clustered unit vectors (like CLS embeddings of scenes), queries are
perturbed keys. Recall@k is measured against IndexFlatIP on the same bank; latency is the
wall time of ``MemoryRetriever.query`` for one batch (search + gathering scene and object
values from the memory-mapped CSR bank), median over many batches.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import hashlib
import os.path as osp
import sys
import tempfile
import time

import numpy as np
import torch

from mmmaps.memory import BankWriter, MemoryBank, MemoryRetriever  # noqa: E402


def clustered(num, dim, clusters, rng, noise=0.4):
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, num)] + noise * rng.standard_normal(
        (num, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(path, keys, objects_per_image, index):
    writer = BankWriter(path, 'object', keys.shape[1], keys.shape[1], 'float16', index)
    rng = np.random.default_rng(1)
    step = 10000
    for s in range(0, len(keys), step):
        part = keys[s:s + step]
        counts = np.full(len(part), objects_per_image)
        ids = np.arange(s, s + len(part))
        writer.add(part, rng.standard_normal((counts.sum(), keys.shape[1])).astype(np.float16),
                   counts, ids, [hashlib.sha256(str(i).encode()).hexdigest() for i in ids])
    writer.commit()
    return MemoryBank.load(path, verify=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[10000, 100000])
    parser.add_argument('--dim', type=int, default=512)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--k', type=int, default=5)
    parser.add_argument('--queries', type=int, default=400)
    parser.add_argument('--objects-per-image', type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    indices = [('Flat', dict(type='Flat')),
               ('HNSW ef=64', dict(type='HNSW', M=32, ef_construction=200, ef_search=64)),
               ('HNSW ef=128', dict(type='HNSW', M=32, ef_construction=200, ef_search=128)),
               ('IVFPQ nprobe=32', dict(type='IVFPQ', nlist=256, m=64, nbits=8, nprobe=32))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            keys = clustered(size, args.dim, max(size // 50, 10), rng)
            queries = keys[rng.integers(0, size, args.queries)] + 0.05 * rng.standard_normal(
                (args.queries, args.dim)).astype(np.float32)
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
            truth = None
            flat_ms = None
            for name, index in indices:
                if index['type'] == 'IVFPQ' and size < 39 * index['nlist']:
                    continue
                start = time.perf_counter()
                bank = build(osp.join(tmp, f'{size}_{name.replace(" ", "_")}'), keys,
                             args.objects_per_image, index)
                build_s = time.perf_counter() - start
                retriever = MemoryRetriever(bank, bank, max_objects=16 * args.k)
                times, found = [], []
                for b in range(0, args.queries, args.batch):
                    q = torch.from_numpy(queries[b:b + args.batch])
                    t0 = time.perf_counter()
                    res = retriever.query(q, args.k)
                    times.append(time.perf_counter() - t0)
                    found.append(res.image_ids.numpy())
                found = np.concatenate(found)
                if truth is None:
                    truth = found
                recall = np.mean([len(set(a) & set(t)) / args.k for a, t in zip(found, truth)])
                ms = 1000 * float(np.median(times))
                flat_ms = flat_ms or ms
                rows.append((size, name, build_s, ms, flat_ms / ms, recall))
    print(f'\nbatch {args.batch} queries, k={args.k}, dim {args.dim}, '
          f'{args.objects_per_image} objects/image, torch threads {torch.get_num_threads()}')
    print(f'{"keys":>8} | {"index":<16} | {"build s":>8} | {"query ms/batch":>14} | '
          f'{"speed-up vs flat":>16} | {"recall@k":>8}')
    print('-' * 86)
    for size, name, build_s, ms, speedup, recall in rows:
        print(f'{size:>8} | {name:<16} | {build_s:8.2f} | {ms:14.3f} | {speedup:16.2f} | '
              f'{recall:8.3f}')


if __name__ == '__main__':
    main()
