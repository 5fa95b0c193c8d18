"""Build the MAPS memory (scene bank, object bank, query-embedding cache) of a dataset.

    python tools/build_memory.py CONFIG [--split train] [--out DIR] [--resume]
                                 [--shard i/n | --merge] [--force] [--device cuda]
    python tools/build_memory.py CONFIG --append --source-ann NEW.json --img-prefix DIR
                                 [--seg-prefix DIR] [--parent ROOT] --out NEW_ROOT

The images are read from the config's own ``{split}_dataloader.dataset``; the
encoders, index and output root come from its ``memory`` section. Progress is
saved per chunk in ``OUT.build/``: after a kill, ``--resume`` continues where it
stopped. Big datasets: run ``--shard i/n`` for i = 0..n-1 (any machines sharing
the folder), then ``--merge``; or ``torchrun --nproc_per_node N
tools/build_memory.py CONFIG`` (one shard per rank, rank 0 merges).

``--append`` writes a NEW memory ``--out`` = the memory ``--parent`` (default
``memory.root``) + the images of another COCO-panoptic annotation file, without
re-encoding the parent's images (their arrays are copied; the index is rebuilt
over all keys). The parent is left untouched; the new root's manifest records
the lineage. Image ids already in the parent, or a config whose encoders / value
dtype / index differ from the parent's, are refused before anything is written.
``--resume``, ``--shard``/``--merge`` and torchrun work as for a build.

The source split is checked first (``mmmaps.datasets.validation``; the same checks
as ``tools/analysis/check_dataset.py``): any problem (segment missing from its PNG,
non-RGB PNG, duplicate image id, unknown category, degenerate image, ...) stops
the build naming the files and image ids. ``--skip-invalid-images`` leaves those
images out instead and lists them in ``OUT.invalid_images.json``.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import atexit
import os
import sys

from mmengine.config import Config, DictAction
from mmengine.logging import print_log

from mmmaps.datasets.validation import DatasetValidationError
from mmmaps.memory.appender import MemoryAppender
from mmmaps.memory.build_plan import MemoryBuildError
from mmmaps.memory.builder import MemoryBuilder, parse_shard, wait_for_chunks
from mmmaps.memory.storage import MANIFEST, MEMORY_FOLDER, MemoryBankError
from mmmaps.utils.output_dirs import OutputOwnershipError, check_output_dir, output_state

# what a memory root holds (merge/append); anything else in --out belongs to someone else


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Build the MAPS memory banks of a dataset')
    parser.add_argument('config', help='model config with a `memory` section')
    parser.add_argument('--split', choices=['train', 'val', 'test'],
                        help='dataset split to encode (default: train)')
    parser.add_argument('--out', help='output directory (default: memory.root, '
                        'with _SPLIT appended for other splits)')
    parser.add_argument('--resume', action='store_true',
                        help='continue a partial build found in OUT.build/')
    parser.add_argument('--force', action='store_true',
                        help='replace the memory already in OUT (also when up to date); '
                        'discard a partial build')
    parser.add_argument('--shard', help='encode only shard i of n (i/n); merge later with --merge')
    parser.add_argument('--merge', action='store_true',
                        help='merge the chunks of all shards into the banks')
    parser.add_argument('--query-cache-only', action='store_true',
                        help='only encode the query keys (e.g. --split val for faster testing)')
    parser.add_argument('--device', help='encoder device (default: cuda if available)')
    parser.add_argument('--skip-invalid-images', action='store_true',
                        help='leave out the images that fail the dataset checks (listed in '
                        'OUT.invalid_images.json) instead of stopping with an error')
    append = parser.add_argument_group(
        'append', 'write a new memory (--out) = an existing one + the images of another '
        'COCO-panoptic annotation file, encoding only the new images')
    append.add_argument('--append', action='store_true', help='append instead of building')
    append.add_argument('--parent', help='the memory to extend (default: memory.root)')
    append.add_argument('--source-ann', help='COCO-panoptic annotation file of the new images')
    append.add_argument('--img-prefix', help='folder of the new images')
    append.add_argument('--seg-prefix', help='folder of their panoptic PNGs (default: '
                        'SOURCE_ANN without .json, the COCO-panoptic layout)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy format')
    args = parser.parse_args(argv)
    only_with_append = [f'--{n.replace("_", "-")}' for n in ('parent', 'source_ann',
                                                              'img_prefix', 'seg_prefix')
                        if getattr(args, n)]
    if args.append:
        missing = [f for f, v in (('--source-ann', args.source_ann),
                                  ('--img-prefix', args.img_prefix), ('--out', args.out)) if not v]
        if missing:
            parser.error(f'--append needs {", ".join(missing)}')
        if args.split or args.query_cache_only:
            parser.error('--append extends the parent\'s banks (its split); --split and '
                         '--query-cache-only do not apply')
    elif only_with_append:
        parser.error(f'{", ".join(only_with_append)} only apply with --append')
    args.split = args.split or 'train'
    return args


def _check_replace(out, args):
    """Publishing replaces ``out``: only a memory written here, and only with --force."""
    sharded = args.merge or args.shard or int(os.environ.get('WORLD_SIZE', '1')) > 1
    hint = 'rerun with --merge --force' if sharded else 'pass --force'
    check_output_dir(out, MEMORY_FOLDER, args.force, legacy_markers=(MANIFEST,),
                     force_hint=f'{hint} to replace it, or choose another --out')


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.config):
        sys.exit(f'config file {args.config!r} does not exist')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if 'custom_imports' in cfg:
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(**cfg.custom_imports)

    if not args.append:
        from mmmaps.memory.foreign_memory import memory_source_config
        source = memory_source_config(cfg, args.split or 'train')
        if source is not cfg:
            print_log(f'memory.dataset_config: the memory indexes the training split of '
                      f'{cfg.memory.dataset_config}', logger='current')
            cfg = source
    shard = parse_shard(args.shard)
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    if shard is None and world > 1:
        shard = (rank, world)
    device = args.device
    if device is None and world > 1:
        import torch
        if torch.cuda.is_available():
            device = f'cuda:{os.environ.get("LOCAL_RANK", "0")}'

    if args.append:
        parent = args.parent or (cfg.get('memory') or {}).get('root')
        if not parent:
            raise MemoryBuildError('--append: memory.root is not set; pass --parent ROOT')
        builder = MemoryAppender(cfg, parent, args.source_ann, args.img_prefix,
                                 args.seg_prefix, out=args.out, device=device,
                                 skip_invalid_images=args.skip_invalid_images)
    else:
        builder = MemoryBuilder(cfg, split=args.split, out=args.out, device=device,
                                query_cache_only=args.query_cache_only,
                                skip_invalid_images=args.skip_invalid_images)
    # refuse a foreign --out before any encoding; an older memory needs --force (at merge)
    state = output_state(builder.out, MEMORY_FOLDER, legacy_markers=(MANIFEST,))
    if shard is None or (world > 1 and rank == 0):  # one build/merge of OUT at a time
        atexit.register(builder.lock().acquire().release)  # a killed owner leaves it stale
        builder.clean_leftovers()
    if not args.merge and not args.force and shard is None and builder.is_up_to_date():
        builder.clean_leftovers(published_intact=True)
        print_log(f'{builder.out} is up to date (same dataset, encoders and settings); '
                  'pass --force to rebuild', logger='current')
        return builder.out
    if args.append:
        print_log(f'appending {len(builder.records)} images of {builder.source["ann_file"]} '
                  f'to the memory {builder.parent_root} ({len(builder.parent_ids)} images, '
                  f'copied, not re-encoded) into {builder.out} on {builder.device}',
                  logger='current')
    else:
        print_log(f'building the {args.split} memory of {len(builder.records)} images into '
                  f'{builder.out} on {builder.device} (key encoder '
                  f'{builder.plan["key_encoder"]["type"]}, dense encoder '
                  f'{(builder.plan["dense_encoder"] or {}).get("type")})', logger='current')
    if args.merge:
        stats = {}
    else:
        if state == 'owned' and not args.force and shard is None:
            _check_replace(builder.out, args)
        if args.force and shard is not None:
            sys.exit('--force would delete the chunks of the other shards; remove OUT.build/ '
                     'by hand to restart a sharded build')
        # shards share one build dir; every shard may create it, none may reset it
        builder.prepare(resume=args.resume or shard is not None, force=args.force)
        stats = builder.encode_chunks(shard or (0, 1))
        if stats['images']:
            print_log(f'encoded {stats["images"]} images in {stats["seconds"]:.1f} s '
                      f'({stats["images"] / max(stats["seconds"], 1e-9):.2f} images/s)',
                      logger='current')
        if shard is not None and world == 1:
            merge = ('the same command with --merge instead of --shard' if args.append else
                     f'python tools/build_memory.py {args.config} --merge'
                     + (f' --out {args.out}' if args.out else ''))
            print_log(f'shard {shard[0]}/{shard[1]} done; when all shards are done run: {merge}',
                      logger='current')
            return None
        if rank != 0:
            return None
        wait_for_chunks(builder)
    _check_replace(builder.out, args)
    out = builder.merge(stats)
    print_log(f'memory written to {out}', logger='current')
    from mmmaps.memory.memory_root import MemoryRoot
    print_log(MemoryRoot(out, verify=False).summary(), logger='current')
    return out


if __name__ == '__main__':
    try:
        main()
    except (MemoryBuildError, MemoryBankError, FileNotFoundError, OutputOwnershipError,
            DatasetValidationError) as exc:
        sys.exit(f'build_memory.py: error: {exc}')
