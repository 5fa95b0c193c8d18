"""Audit a MAPS memory against a split before a long training: does anything leak?

    python tools/analysis/audit_memory.py CONFIG [--split train|val|test] [--bank DIR]
        [--batch 16] [--device cpu] [--cfg-options k=v ...]

Builds the config's memory exactly as a run does (``mmmaps.memory.build_external_memory``
from the ``memory`` section) and the split's dataset exactly as its dataloader does
(``{split}_dataloader.dataset``: subsets, ``ConcatDataset``, ``RepeatDataset`` ... included),
then sends every distinct image of the split through the model's own retrieval path
(``ExternalMemory.retrieve``: training policy for ``train``, evaluation policy otherwise) and
prints one JSON object:

- ``images``: distinct images of the split;
- ``in_memory``: how many of them the memory holds (by the sha256 of the image file, so a
  re-saved, subset, renumbered or appended copy counts);
- ``self_retrievals``: queries whose top-k contain their own picture (a leak: in training
  the model would read its own ground truth, at test time it would be evaluated on it);
- ``cache_hits`` / ``cache_misses``: query keys served by a query cache (by content) / encoded;
- ``leak``: whether anything leaks (``self_retrievals`` > 0, or for an evaluation split any
  image in the memory).

Exits 1 on a leak, 0 otherwise. Run it first, before a long training.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../../..'))  # noqa (this checkout first)

import argparse
import json
import os.path as osp
import sys



def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='a MAPS config with a `memory` section')
    parser.add_argument('--split', default='train', choices=['train', 'val', 'test'])
    parser.add_argument('--bank', help='memory directory (default: memory.root)')
    parser.add_argument('--batch', type=int, default=16, help='images per retrieval batch')
    parser.add_argument('--device', help='key encoder device (default: cuda when available)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy format')
    return parser.parse_args(argv)


def audit(cfg, split: str, bank=None, batch: int = 16, device=None) -> dict:
    import copy

    import mmcv
    import torch
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    from mmmaps.engine.hooks.memory_hook import dataset_image_paths
    from mmmaps.memory import build_external_memory
    from mmmaps.memory.builder import memory_cfg_of

    register_all_modules()  # the dataset's pipeline names mmdet transforms
    key = f'{split}_dataloader'
    if key not in cfg:
        raise KeyError(f'the config has no {key}')
    dataset_cfg = copy.deepcopy(cfg[key]['dataset'])
    dataset = DATASETS.build(dataset_cfg)
    paths = dataset_image_paths(dataset)
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    memory = build_external_memory(memory_cfg_of(cfg), root=bank, device=device)
    training = split == 'train'
    inside = memory.in_memory(paths)
    self_hits, hits = [], 0
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        images = []
        for path in chunk:
            image = mmcv.imread(path, channel_order='rgb')
            if image is None:
                raise FileNotFoundError(f'cannot read image {path}')
            images.append(torch.from_numpy(image.transpose(2, 0, 1).copy()).float().to(device))
        with torch.no_grad():
            result = memory.retrieve(images, chunk, training=training, with_objects=False)
        hits += int(result.keys_from_cache.sum())
        self_hits += [p for p, own in zip(chunk, memory.self_retrievals(result, chunk)) if own]
    report = dict(
        config=cfg.filename, split=split, memory=memory.root.root,
        policy='training (own picture excluded)' if training else
        'evaluation (nothing excluded)',
        images=len(paths), in_memory=int(sum(inside)), self_retrievals=len(self_hits),
        self_retrieval_examples=self_hits[:5], cache_hits=hits, cache_misses=len(paths) - hits,
        k=memory.k)
    report['leak'] = bool(self_hits) or (not training and report['in_memory'] > 0)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config {args.config} does not exist')
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    report = audit(cfg, args.split, bank=args.bank, batch=args.batch, device=args.device)
    print(json.dumps(report, indent=1))
    return 1 if report['leak'] else 0


if __name__ == '__main__':
    from mmmaps.memory.storage import MemoryBankError
    try:
        sys.exit(main())
    except (FileNotFoundError, KeyError, MemoryBankError) as exc:
        sys.exit(f'audit_memory.py: error: {exc}')
