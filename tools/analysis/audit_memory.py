"""Audit a MAPS memory against a split before a long training: does anything leak?

    python tools/analysis/audit_memory.py CONFIG [--split train|val|test] [--bank DIR]
        [--batch 16] [--device cpu] [--cfg-options k=v ...]

Builds the config's memory exactly as a run does (``mmmaps.memory.build_external_memory``
from the ``memory`` section) and the split's dataset exactly as its dataloader does
(``{split}_dataloader.dataset``: subsets, ``ConcatDataset``, ``RepeatDataset`` ... included),
then sends every distinct image of the split through the model's own retrieval path
(``ExternalMemory.retrieve``: training policy for ``train``, evaluation policy otherwise) and
prints one JSON object:

- ``memory_indexes`` / ``memory_dataset_config``: the annotation file the memory was built
  from and, for a memory of another dataset, the config naming it (``memory.dataset_config``);
  ``query_keys``: where query keys come from (``memory.retrieval.query_keys``);
- ``images``: distinct images of the split;
- ``in_memory``: how many of them the memory holds (by the sha256 of the image file, so a
  re-saved, subset, renumbered or appended copy counts);
- ``self_retrievals``: queries whose top-k contain their own picture (a leak: in training
  the model would read its own ground truth, at test time it would be evaluated on it);
- ``cache_hits`` / ``cache_misses``: query keys served by a query cache (by content) / encoded;
- ``near_duplicates``: queries that retrieve a memory image of *other* file content whose key
  is near-identical to theirs (cosine >= ``near_duplicate_threshold``,
  ``mmmaps.memory.retriever.NEAR_DUPLICATE_SIMILARITY``): the same picture re-encoded
  (JPEG q97/q90) or slightly resized, which the content identity cannot recognise (the
  threshold and what it separates are measured by benchmarks/near_duplicate_similarity.py);
  ``near_duplicate_examples`` names the first few (image, memory image id, similarity);
- ``leak``: whether anything leaks, and ``leak_reasons`` which of: ``self_retrievals``
  (> 0), ``in_memory`` (an evaluation split's images in the memory), ``near_duplicates``
  (> 0). A near-duplicate is a leak by content, not by file: ``leak`` is never false while
  near-duplicates are found.

Exit status: 0 no leak; 1 a leak by file content (``self_retrievals`` or ``in_memory``; user
errors print one line and exit 1 too); 3 near-duplicates only (keys this close can also be two
distinct but nearly identical pictures: check ``near_duplicate_examples``). Run it first,
before a long training.
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
    from mmmaps.memory.build_plan import memory_cfg_of
    from mmmaps.memory.retriever import NEAR_DUPLICATE_SIMILARITY

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
    bank = memory.root.scene_bank
    self_hits, near, hits = [], [], 0
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        images = []
        for path in chunk:
            image = mmcv.imread(path, channel_order='rgb')
            if image is None:
                raise FileNotFoundError(f'cannot read image {path}')
            images.append(torch.from_numpy(image.transpose(2, 0, 1).copy()).float().to(device))
        with torch.no_grad():
            result = memory.retrieve(images, chunk, training=training, with_objects=False,
                                     whole_pictures=[True] * len(chunk))
        hits += int(result.keys_from_cache.sum())
        self_hits += [p for p, own in zip(chunk, memory.self_retrievals(result, chunk)) if own]
        flags = result.near_duplicates(NEAR_DUPLICATE_SIMILARITY)
        for b, path in enumerate(chunk):
            own = set(bank.rows_of_identity(memory.identity_of(path)))
            slots = [j for j in flags[b].nonzero()[:, 0].tolist()
                     if int(result.rows[b, j]) not in own]
            if slots:  # slots are in score order: the first is the closest copy
                near.append(dict(image=path, memory_image_id=int(result.image_ids[b, slots[0]]),
                                 similarity=round(float(result.scores[b, slots[0]]), 6)))
    report = dict(
        config=cfg.filename, split=split, memory=memory.root.root,
        memory_indexes=memory.root.source.get('ann_file'),
        memory_dataset_config=memory_cfg_of(cfg).get('dataset_config'),
        query_keys=memory.query_key_source,
        policy='training (own picture excluded)' if training else
        'evaluation (nothing excluded)',
        images=len(paths), in_memory=int(sum(inside)), self_retrievals=len(self_hits),
        self_retrieval_examples=self_hits[:5], near_duplicates=len(near),
        near_duplicate_threshold=NEAR_DUPLICATE_SIMILARITY, near_duplicate_examples=near[:5],
        cache_hits=hits, cache_misses=len(paths) - hits, k=memory.k)
    reasons = dict(self_retrievals=bool(self_hits),
                   in_memory=not training and report['in_memory'] > 0,
                   near_duplicates=bool(near))
    report['leak_reasons'] = [name for name, found in reasons.items() if found]
    report['leak'] = bool(report['leak_reasons'])
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
    return exit_status(report)


def exit_status(report: dict) -> int:
    """0 no leak, 1 a leak by file content, 3 near-duplicates only."""
    if set(report['leak_reasons']) - {'near_duplicates'}:
        return 1
    return 3 if report['leak'] else 0


if __name__ == '__main__':
    from mmmaps.memory.storage import MemoryBankError
    try:
        sys.exit(main())
    except (FileNotFoundError, KeyError, MemoryBankError) as exc:
        sys.exit(f'audit_memory.py: error: {exc}')
