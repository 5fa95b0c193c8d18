"""Mask-wise merging vs mmdet's MaskFormer post-processing: time per image.

    python benchmarks/mask_merging_speed.py [--queries 100 200 300] [--size 800 1333]
                                            [--reps 5] [--device cpu|cuda]

Inputs imitate a trained 133-class model: 30 confident queries whose masks tile the image,
the other queries unconfident with mostly negative masks; logits made at 1/4 resolution and
upsampled (bilinearly, as ``predict`` does) to the output size. Both heads get the same tensors; only the panoptic post-processing is timed
(median of --reps runs). Prints ms per image and the ratio mmdet / mask-wise.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import sys

import torch
import torch.nn.functional as F

from mmdet.models.seg_heads.panoptic_fusion_heads import MaskFormerFusionHead  # noqa: E402

from benchmarks.timing import median_seconds  # noqa: E402
from mmmaps.models.seg_heads import MaskWiseMergingFusionHead  # noqa: E402

THINGS, STUFF = 80, 53


def inputs(queries, size, device, seed=0, segments=30):
    """Like a trained model's output: ``segments`` confident queries whose masks tile the
    image (a Voronoi partition, soft borders, noise), the rest unconfident and mostly
    negative; masks at 1/4 resolution, bilinearly upsampled to ``size``."""
    gen = torch.Generator().manual_seed(seed)
    low = (size[0] // 4, size[1] // 4)
    seeds = torch.rand(segments, 2, generator=gen) * torch.tensor(low, dtype=torch.float)
    ys, xs = torch.meshgrid(torch.arange(low[0]), torch.arange(low[1]), indexing='ij')
    dist = ((ys[None] - seeds[:, 0, None, None])**2 + (xs[None] - seeds[:, 1, None, None])**2)
    nearest = dist.sqrt()
    margin = nearest - nearest.min(0, keepdim=True).values  # 0 inside own cell
    masks = torch.randn(queries, *low, generator=gen) - 4.0
    masks[:segments] = 4.0 - margin.clamp(max=16) + 0.5 * torch.randn(segments, *low,
                                                                       generator=gen)
    cls = torch.randn(queries, THINGS + STUFF + 1, generator=gen)
    labels = torch.randint(0, THINGS + STUFF, (segments, ), generator=gen)
    cls[torch.arange(segments), labels] += 8
    masks = F.interpolate(masks[:, None], size=size, mode='bilinear', align_corners=False)[:, 0]
    return cls.to(device), masks.to(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--queries', type=int, nargs='+', default=[100, 200, 300])
    parser.add_argument('--size', type=int, nargs=2, default=[800, 1333])
    parser.add_argument('--reps', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    sync = torch.cuda.synchronize if args.device.startswith('cuda') else (lambda: None)
    kw = dict(num_things_classes=THINGS, num_stuff_classes=STUFF)
    ours = MaskWiseMergingFusionHead(test_cfg=dict(merge='mask_wise'), **kw)
    mmdet = MaskFormerFusionHead(test_cfg=dict(object_mask_thr=0.8, iou_thr=0.8), **kw)
    print(f'\noutput {args.size[0]}x{args.size[1]}, device {args.device}, torch threads '
          f'{torch.get_num_threads()}, median of {args.reps}')
    print(f'{"queries":>7} | {"mask-wise ms":>12} | {"mmdet (p*) ms":>13} | '
          f'{"mmdet / mask-wise":>17} | {"segments (ours/mmdet)":>21}')
    print('-' * 84)
    with torch.no_grad():
        for queries in args.queries:
            cls, masks = inputs(queries, tuple(args.size), args.device)
            t_ours = median_seconds(lambda: ours.panoptic_postprocess(cls, masks), args.reps, sync)
            t_mmdet = median_seconds(lambda: mmdet.panoptic_postprocess(cls, masks), args.reps, sync)
            n_ours = len(torch.unique(ours.panoptic_postprocess(cls, masks).sem_seg))
            n_mmdet = len(torch.unique(mmdet.panoptic_postprocess(cls, masks).sem_seg))
            print(f'{queries:>7} | {1000 * t_ours:12.1f} | {1000 * t_mmdet:13.1f} | '
                  f'{t_mmdet / t_ours:17.2f} | {f"{n_ours}/{n_mmdet}":>21}')


if __name__ == '__main__':
    main()
