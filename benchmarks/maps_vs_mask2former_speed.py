"""MAPS vs Mask2Former: train-step and inference time, with and without cached query keys.

    python benchmarks/maps_vs_mask2former_speed.py [--batch 4] [--reps 10] [--device cpu]
        [--maps configs/maps/maps_r18_synthetic-panoptic.py]
        [--baseline configs/mask2former/mask2former_r18_synthetic-panoptic.py]

Generates a small synthetic dataset, builds its memory (train banks + val query cache),
then times on the same batches: a training step (forward + backward) and a test step of
the baseline and of MAPS, MAPS once reading the query keys from the cache and once running
the frozen CLIP encoder on the images. Prints median times and MAPS / Mask2Former ratios.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import os
import os.path as osp
import statistics
import sys
import tempfile
import time

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
from mmengine.config import Config  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402

from mmdet.registry import DATASETS, MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

from mmmaps.datasets import generate_synthetic_panoptic  # noqa: E402
from mmmaps.memory import build_external_memory  # noqa: E402
from mmmaps.memory.builder import MemoryBuilder  # noqa: E402


def timed_interleaved(fns, reps, sync):
    """Median seconds of each function, run in turn every repetition so that drift in
    the machine's speed (other processes, thermal) hits all of them alike."""
    for fn in fns:  # warm-up
        fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, bucket in zip(fns, times):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--maps', default=osp.join(
        REPO, 'configs/maps/maps_r18_synthetic-panoptic.py'))
    parser.add_argument('--baseline', default=osp.join(
        REPO, 'configs/mask2former/mask2former_r18_synthetic-panoptic.py'))
    parser.add_argument('--baseline-ckpt', help='trained baseline weights (optional)')
    parser.add_argument('--maps-ckpt', help='trained MAPS weights (optional)')
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--reps', type=int, default=20)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    sync = torch.cuda.synchronize if args.device.startswith('cuda') else (lambda: None)
    register_all_modules()
    with tempfile.TemporaryDirectory() as tmp:
        data = osp.join(tmp, 'data')
        generate_synthetic_panoptic(data, num_train=32, num_val=8, seed=0, size=(128, 128),
                                    progress=False)
        os.environ['MMMAPS_SYNTHETIC_ROOT'] = data + '/'
        maps_cfg = Config.fromfile(args.maps)
        maps_cfg.memory.root = osp.join(tmp, 'memory')
        base_cfg = Config.fromfile(args.baseline)
        for split, cache_only in (('train', False), ('val', True)):
            builder = MemoryBuilder(maps_cfg, split=split, device=args.device,
                                    query_cache_only=cache_only)
            builder.prepare(resume=False, force=False)
            builder.encode_chunks(progress=False)
            builder.merge()

        torch.manual_seed(0)
        baseline = MODELS.build(base_cfg.model).to(args.device)
        torch.manual_seed(0)
        maps = MODELS.build(maps_cfg.model).to(args.device)
        if args.baseline_ckpt:
            load_checkpoint(baseline, args.baseline_ckpt, map_location=args.device)
        if args.maps_ckpt:
            load_checkpoint(maps, args.maps_ckpt, map_location=args.device)
        else:
            # same weights where the architectures agree, so both make the same kind of
            # predictions and post-processing costs the same
            maps.load_state_dict(baseline.state_dict(), strict=False)
        # the same memory twice: query keys from its caches (train + val, by image content),
        # and the CLIP key encoder run on every image
        cached = build_external_memory(maps_cfg.memory, device=args.device)
        on_the_fly = build_external_memory(maps_cfg.memory, device=args.device,
                                           query_caches=False)
        train_set = DATASETS.build(maps_cfg.train_dataloader.dataset)
        val_set = DATASETS.build(maps_cfg.val_dataloader.dataset)
        train_batch = pseudo_collate([train_set[i] for i in range(args.batch)])
        val_batch = pseudo_collate([val_set[i] for i in range(args.batch)])

        def train_step(model):
            model.train()
            data = model.data_preprocessor(train_batch, True)
            losses = model(**data, mode='loss')
            sum(v for k, v in losses.items() if 'loss' in k).backward()
            model.zero_grad(set_to_none=True)

        def test_step(model):
            model.eval()
            with torch.no_grad():
                model.test_step(val_batch)

        def with_memory(step, memory):
            def run():
                maps.attach_memory(memory)
                step(maps)
            return run

        rows = []
        t_base, t_cached, t_encoded = timed_interleaved(
            [lambda: train_step(baseline), with_memory(train_step, cached),
             with_memory(train_step, on_the_fly)], args.reps, sync)
        rows += [('train step', 'Mask2Former', t_base, 1.0),
                 ('train step', 'MAPS, cached query keys', t_cached, t_cached / t_base),
                 ('train step', 'MAPS, CLIP on the fly', t_encoded, t_encoded / t_base)]
        i_base, i_cached, i_encoded = timed_interleaved(
            [lambda: test_step(baseline), with_memory(test_step, cached),
             with_memory(test_step, on_the_fly)], args.reps, sync)
        rows += [('inference', 'Mask2Former', i_base, 1.0),
                 ('inference', 'MAPS, cached query keys', i_cached, i_cached / i_base),
                 ('inference', 'MAPS, CLIP on the fly', i_encoded, i_encoded / i_base)]
    print(f'\nbatch {args.batch} images 128x128, {args.reps} reps (median), device {args.device}, '
          f'torch threads {torch.get_num_threads()}; MAPS: {osp.basename(args.maps)}')
    print(f'{"what":<11} | {"model":<26} | {"ms":>9} | {"ratio to Mask2Former":>20}')
    print('-' * 75)
    for what, name, seconds, ratio in rows:
        print(f'{what:<11} | {name:<26} | {1000 * seconds:9.1f} | {ratio:20.3f}')


if __name__ == '__main__':
    main()
