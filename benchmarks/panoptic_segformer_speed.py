"""Panoptic SegFormer: query filtering (appendix B.2) and earlier mask layers (Table 10).

    python benchmarks/panoptic_segformer_speed.py [--size 384] [--thing-queries 300]
        [--filter 46] [--reps 5] [--device cpu] [--config ...r18_synthetic.py]

Builds the tiny config scaled up to the paper's query counts (``--thing-queries`` thing
queries plus one stuff query per class) on ``--size`` x ``--size`` synthetic images, then

1. times a training step (forward + backward) without and with multi-round Hungarian query
   filtering (only ``--filter`` thing queries enter the mask decoder) and measures the peak
   memory of each (CUDA: max allocated; CPU: peak RSS of a fresh process per setting);
2. times inference with the masks of mask-decoder layer 1, 2, ..., D_m (Table 10).

Prints medians and ratios to the unfiltered / full-depth model.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import json
import os.path as osp
import resource
import subprocess
import sys
import tempfile

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
from mmengine.dataset import pseudo_collate  # noqa: E402

from mmdet.registry import DATASETS, MODELS  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

from benchmarks.timing import median_seconds  # noqa: E402
from mmmaps.datasets import generate_synthetic_panoptic  # noqa: E402
from tests.conftest import load_config_with_root  # noqa: E402

CONFIG = osp.join(REPO, 'configs/panoptic_segformer/panoptic-segformer_r18_synthetic.py')


def build(args, root, query_filter=None):
    size = (args.size, args.size)
    options = {
        'model.num_queries': args.thing_queries,
        'model.bbox_head.query_filter': query_filter,
        'model.data_preprocessor.batch_augments': None,
        'train_dataloader.dataset.pipeline.3.scale': size,
        'train_dataloader.dataset.pipeline.4.crop_size': size,
        'val_dataloader.dataset.pipeline.1.scale': size,
    }
    cfg = load_config_with_root(args.config, root, options)
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).to(args.device)
    model.init_weights()
    return model, cfg


def batches(model, cfg, batch):
    train = DATASETS.build(cfg.train_dataloader.dataset)
    val = DATASETS.build(cfg.val_dataloader.dataset)
    train_data = model.data_preprocessor(pseudo_collate([train[i] for i in range(batch)]), True)
    val_data = model.data_preprocessor(pseudo_collate([val[i] for i in range(batch)]), False)
    return train_data, val_data


def median_time(fn, reps, device):
    return median_seconds(fn, reps, torch.cuda.synchronize if device.startswith('cuda')
                          else (lambda: None))


def train_step(args, root, num_filter):
    """One setting in this process: median train-step seconds and peak memory (MiB)."""
    query_filter = dict(num_queries=num_filter, num_rounds=3) if num_filter else None
    model, cfg = build(args, root, query_filter)
    data, _ = batches(model, cfg, args.batch)
    model.train()

    def step():
        model.zero_grad()
        losses = model(**data, mode='loss')
        sum(v for k, v in losses.items() if 'loss' in k).backward()

    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    seconds = median_time(step, args.reps, args.device)
    if args.device.startswith('cuda'):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return seconds, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default=CONFIG)
    parser.add_argument('--size', type=int, default=384)
    parser.add_argument('--thing-queries', type=int, default=300)
    parser.add_argument('--filter', type=int, default=46)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--reps', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--root', help='existing synthetic dataset (generated if omitted)')
    parser.add_argument('--one-train-step', type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.root is None:
        tmp = tempfile.mkdtemp(prefix='psf_bench_')
        generate_synthetic_panoptic(osp.join(tmp, 'data'), num_train=8, num_val=8, seed=0,
                                    size=(args.size, args.size), progress=False)
        args.root = osp.join(tmp, 'data') + '/'
    if args.one_train_step is not None:  # child process: one setting, JSON on stdout
        print(json.dumps(train_step(args, args.root, args.one_train_step)))
        return

    print(f'{args.thing_queries} thing queries + stuff queries, {args.size}x{args.size}, '
          f'batch {args.batch}, {args.device}, {torch.get_num_threads()} threads')
    rows = []
    for num_filter in (0, args.filter):
        cmd = [sys.executable, __file__, '--one-train-step', str(num_filter), '--root',
               args.root] + [f'--{k.replace("_", "-")}={v}' for k, v in vars(args).items()
                             if k in ('config', 'size', 'thing_queries', 'batch', 'reps',
                                      'device')]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append((num_filter, *json.loads(out.strip().splitlines()[-1])))
    base_s, base_mem = rows[0][1], rows[0][2]
    print('\ntrain step (appendix B.2)      |   ms | ratio | peak MiB | ratio')
    for num_filter, seconds, peak in rows:
        name = f'query filter, {num_filter} thing queries' if num_filter else 'all thing queries'
        print(f'{name:30s} | {seconds * 1e3:6.0f} | {seconds / base_s:5.2f} | {peak:8.0f} | '
              f'{peak / base_mem:5.2f}')

    model, cfg = build(args, args.root)
    _, data = batches(model, cfg, args.batch)
    model.eval()
    depth = model.bbox_head.mask_decoder.num_layers
    times = []
    for layer in range(1, depth + 1):
        model.bbox_head.test_cfg['mask_decoder_layer'] = layer
        with torch.no_grad():
            times.append(median_time(lambda: model.predict(data['inputs'], data['data_samples']),
                                     args.reps, args.device))
    print('\ninference (Table 10)           |   ms | ratio to last layer')
    for layer, seconds in enumerate(times, 1):
        print(f'masks of mask-decoder layer {layer}  | {seconds * 1e3:6.0f} | '
              f'{seconds / times[-1]:5.2f}')


if __name__ == '__main__':
    main()
