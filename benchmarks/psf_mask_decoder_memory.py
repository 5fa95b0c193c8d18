"""Activation memory of the Panoptic SegFormer mask decoder at 800 x 1333 (issue: "<12 GB").

    python benchmarks/psf_mask_decoder_memory.py [--height 800 --width 1333] [--out FILE]

Runs the mask decoder(s) of the R50 configs (paper text and release) on the ``meta``
device, so nothing is allocated, and adds up the bytes of every tensor autograd saves for
the backward pass (unique storages, fp32): the activation memory one training image holds
in the mask decoder. Encoder tokens: C3-C5 of an 800 x 1333 input padded to a multiple of
32 (1/8, 1/16, 1/32). Query counts: all 300 thing + 53 stuff queries (353), or the query
filter's (paper-text config: 46 + 53 = 99; release: up to 100 thing queries from 3
Hungarian rounds, plus 53 stuff queries in their own decoder). Weights, optimizer state,
the backbone, the deformable encoder and the location decoder are not counted.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import json
import math
import os
import os.path as osp

import torch
from mmengine.config import Config

from mmdet.utils import register_all_modules

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PSF = osp.join(REPO, 'configs', 'panoptic_segformer')


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves while ``fn`` runs."""
    seen = {}

    def pack(tensor):
        key = (id(tensor.untyped_storage()) if tensor.device.type != 'meta' else id(tensor),
               tuple(tensor.shape))
        seen[key] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def level_shapes(height: int, width: int):
    pad_h, pad_w = math.ceil(height / 32) * 32, math.ceil(width / 32) * 32
    return [(pad_h // s, pad_w // s) for s in (8, 16, 32)]


def run(decoder, num_queries: int, shapes, with_self_attn_mask=False) -> int:
    decoder = decoder.to('meta')
    dims = decoder.embed_dims
    length = sum(h * w for h, w in shapes)
    query = torch.empty(1, num_queries, dims, device='meta', requires_grad=True)
    memory = torch.empty(1, length, dims, device='meta', requires_grad=True)
    spatial = torch.tensor(shapes)

    def forward():
        outputs = decoder(query, torch.zeros_like(query), memory, torch.zeros_like(memory),
                          None, spatial)
        return sum(o.masks.sum() for o in outputs)

    return saved_bytes(forward)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--height', type=int, default=800)
    parser.add_argument('--width', type=int, default=1333)
    parser.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'results',
                                                  'psf_mask_decoder_memory.json'))
    args = parser.parse_args()
    register_all_modules()
    import mmmaps  # noqa: F401
    from mmmaps.models import AttentionMaskDecoder
    shapes = level_shapes(args.height, args.width)
    paper = Config.fromfile(osp.join(PSF, 'panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'))
    release = Config.fromfile(
        osp.join(PSF, 'panoptic-segformer-release_r50_8xb1-24e_coco-panoptic.py'))
    head = paper.model.bbox_head
    num_stuff = head.num_stuff_classes
    rows = []
    shared = AttentionMaskDecoder(**head.mask_decoder)
    for label, things in (('paper text, all queries', paper.model.num_queries),
                          ('paper text, query filter', 46)):
        rows.append((label, things + num_stuff, run(shared, things + num_stuff, shapes)))
    rhead = release.model.bbox_head
    thing_dec = AttentionMaskDecoder(**rhead.thing_mask_decoder)
    stuff_dec = AttentionMaskDecoder(**rhead.stuff_mask_decoder)
    stuff_bytes = run(stuff_dec, num_stuff, shapes)
    for label, things in (('release, all queries', release.model.num_queries),
                          # one Hungarian round keeps N_gt thing queries: an image with 100
                          ('release, query filter (100 things)', 100)):
        rows.append((label, things + num_stuff, run(thing_dec, things, shapes) + stuff_bytes))
    result = dict(input=[args.height, args.width], levels=shapes,
                  tokens=sum(h * w for h, w in shapes),
                  rows=[dict(variant=v, queries=q, activation_gib=b / 2**30)
                        for v, q, b in rows])
    print(f'mask decoder activations saved for backward, {args.height}x{args.width}, '
          f'{result["tokens"]} tokens, fp32, one image:')
    for v, q, b in rows:
        print(f'  {v:32s} {q:4d} queries  {b / 2**30:6.2f} GiB')
    if args.out:
        with open(args.out + '.tmp', 'w') as f:
            json.dump(result, f, indent=1)

        os.replace(args.out + '.tmp', args.out)


if __name__ == '__main__':
    main()
