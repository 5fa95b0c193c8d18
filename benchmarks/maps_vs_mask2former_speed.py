"""MAPS vs Mask2Former: train-step and inference time, for each source of the query keys.

    python benchmarks/maps_vs_mask2former_speed.py [--batch 4] [--reps 10] [--device cpu]
        [--maps configs/maps/maps_r18_synthetic-panoptic.py]
        [--baseline configs/mask2former/mask2former_r18_synthetic-panoptic.py] [--publish]

Generates a small synthetic dataset, builds its memory (train banks + val query cache),
then times on the same batches, interleaved: a training step (forward + backward) of the
baseline and of MAPS with its keys from the model's (augmented) input (the default, the
paper: the frozen key encoder runs in every step) and from the whole-image cache
(``memory.retrieval.query_keys='full_image_cache'``); and a test step of the baseline and of
MAPS with its val keys from the query cache (whole pictures, the default) and from the key
encoder. Prints median times and MAPS / Mask2Former ratios; ``--publish`` writes
``benchmarks/results/maps_vs_mask2former_speed.{json,md}``.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import copy
import json
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
    parser.add_argument('--publish', action='store_true',
                        help='write benchmarks/results/maps_vs_mask2former_speed.{json,md}')
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
            # predictions and post-processing costs the same (the memory layers keep the
            # initialisation init_weights gives them)
            maps.init_weights()
            maps.load_state_dict(baseline.state_dict(), strict=False)
        # the same memory three ways: the default (training keys from the model input, val
        # keys of whole pictures from the cache), the full-image cache in training too, and
        # no cache at all (the key encoder on every image)
        default = build_external_memory(maps_cfg.memory, device=args.device)
        full_image = copy.deepcopy(maps_cfg.memory)
        full_image.retrieval.query_keys = 'full_image_cache'
        full_image = build_external_memory(full_image, device=args.device)
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
        t_base, t_input, t_cached = timed_interleaved(
            [lambda: train_step(baseline), with_memory(train_step, default),
             with_memory(train_step, full_image)], args.reps, sync)
        rows += [('train step', 'Mask2Former', t_base, 1.0),
                 ('train step', 'MAPS, keys from the model input (default)', t_input,
                  t_input / t_base),
                 ('train step', 'MAPS, full-image cache', t_cached, t_cached / t_base)]
        i_base, i_cached, i_encoded = timed_interleaved(
            [lambda: test_step(baseline), with_memory(test_step, default),
             with_memory(test_step, on_the_fly)], args.reps, sync)
        rows += [('inference', 'Mask2Former', i_base, 1.0),
                 ('inference', 'MAPS, cached keys of whole pictures (default)', i_cached,
                  i_cached / i_base),
                 ('inference', 'MAPS, key encoder on every image', i_encoded,
                  i_encoded / i_base)]
    header = (f'batch {args.batch} images 128x128, {args.reps} reps (median, interleaved), '
              f'device {args.device}, torch threads {torch.get_num_threads()}; MAPS: '
              f'{osp.basename(args.maps)} (key encoder '
              f'{maps_cfg.memory.key_encoder.get("arch")})')
    lines = [header, '', '| what | model | ms | ratio to Mask2Former |', '|---|---|---|---|']
    lines += [f'| {what} | {name} | {1000 * seconds:.1f} | {ratio:.3f} |'
              for what, name, seconds, ratio in rows]
    print('\n' + '\n'.join(lines))
    if args.publish:
        out = osp.join(REPO, 'benchmarks', 'results', 'maps_vs_mask2former_speed')
        with open(out + '.json', 'w') as f:
            json.dump(dict(params=vars(args), rows=[dict(what=a, model=b, seconds=c, ratio=d)
                                                    for a, b, c, d in rows]), f, indent=2)
        with open(out + '.md', 'w') as f:
            f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
