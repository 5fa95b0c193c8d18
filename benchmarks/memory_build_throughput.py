"""Memory build throughput vs the bare encoder forward passes it cannot avoid.

    python benchmarks/memory_build_throughput.py [--config CONFIG] [--num-images 48]
                                                 [--size 128] [--device cpu]

Generates a synthetic dataset, then times (a) the key + dense encoders alone on the
already-decoded images (the floor), and (b) the whole ``MemoryBuilder`` path: image and PNG
decoding, encoding, segment pooling, chunk checkpoints, merge, FAISS index and manifest.
Prints images/s of both and their ratio (1.0 = no overhead beyond the encoders).
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import os
import os.path as osp
import sys
import tempfile
import time

import mmcv
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
from mmengine.config import Config  # noqa: E402

from mmmaps.datasets import generate_synthetic_panoptic  # noqa: E402
from mmmaps.memory.builder import MemoryBuilder  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default=osp.join(
        REPO, 'configs/memory/memory_tiled-clip_vit-s16_synthetic-panoptic.py'))
    parser.add_argument('--num-images', type=int, default=48)
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = osp.join(tmp, 'data')
        generate_synthetic_panoptic(data, num_train=args.num_images, num_val=1, seed=0,
                                    size=(args.size, args.size), progress=False)
        os.environ['MMMAPS_SYNTHETIC_ROOT'] = data + '/'
        cfg = Config.fromfile(args.config)
        builder = MemoryBuilder(cfg, out=osp.join(tmp, 'memory'), device=args.device)
        batch = int(builder.options['batch_size'])
        images = [torch.from_numpy(mmcv.imread(r['img_path'], channel_order='rgb')
                                   .transpose(2, 0, 1).copy()) for r in builder.records]
        sync = torch.cuda.synchronize if builder.device.type == 'cuda' else (lambda: None)
        with torch.no_grad():  # warm-up
            builder.key_encoder(images[:batch])
            if builder.dense_encoder is not None:
                builder.dense_encoder(images[:batch])
            sync()
            start = time.perf_counter()
            for b in range(0, len(images), batch):
                builder.key_encoder(images[b:b + batch])
                if builder.dense_encoder is not None:
                    builder.dense_encoder(images[b:b + batch])
            sync()
            bare = time.perf_counter() - start
        start = time.perf_counter()
        builder.prepare(resume=False, force=False)
        builder.encode_chunks(progress=False)
        builder.merge()
        sync()
        full = time.perf_counter() - start
    n = len(images)
    print(f'\n{n} images {args.size}x{args.size}, key {builder.plan["key_encoder"]["type"]} '
          f'({builder.plan["key_encoder"]["arch"]}), dense '
          f'{(builder.plan["dense_encoder"] or {}).get("type")}, device {builder.device}, '
          f'batch {batch}, loader workers {builder.options["num_workers"]}')
    print(f'{"path":<34} | {"seconds":>8} | {"images/s":>9}')
    print('-' * 58)
    print(f'{"bare encoder forward":<34} | {bare:8.2f} | {n / bare:9.2f}')
    print(f'{"tools/build_memory (end to end)":<34} | {full:8.2f} | {n / full:9.2f}')
    print(f'build throughput / bare encoder throughput = {bare / full:.2f}')


if __name__ == '__main__':
    main()
