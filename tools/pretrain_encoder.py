"""Pretrain the CPU stand-in for CLIP: an open_clip ViT trained self-supervised (SimCLR) on a
pool of unlabelled images, saved as an open_clip checkpoint that the memory encoders load
through ``pretrained=PATH`` exactly like real CLIP weights.

    python tools/pretrain_encoder.py                       # defaults below, cached
    python tools/pretrain_encoder.py --pool DIR --out FILE --steps 300 --seed 0

By default the pool is ``data/synthetic_pool/train``: 4000 images of the bundled generator
drawn with seed 1, disjoint from the labelled dataset (seed 0) and 10x its 400 training
images; it is generated when missing. Only the image files are read, never annotations,
unless ``--captions ANN`` gives every pool image a caption (its scene type): then CLIP's
image-to-caption term is trained too, the stand-in for the knowledge CLIP gets from text
(issue 25: a key encoder that knows what the detector's few labels do not teach).

``--arch mmmaps-ConvNet-MaxPool-112`` trains the max-pooled ConvNet stand-in instead
(``mmmaps/memory/encoders/convnet.py``: the tower that learns small arbitrary landmarks, where
the ViT does not); ``--simclr-weight 0`` trains the caption term alone.

Writes ``OUT`` (for an open_clip arch the full open_clip state dict: the trained visual tower
and the untrained, seeded text tower; for the ConvNet the tower's state dict) and
``OUT.json`` (parameters, pool digest, loss curve, wall time and, when ``--eval-ann``
exists, scene-retrieval quality next to random initialisations). Both are written under
temporary names and renamed. A checkpoint whose parameters and pool match is
reused unless ``--force``.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import hashlib
import json
import os
import os.path as osp
import sys
import time


DEFAULT_POOL = 'data/synthetic_pool'
DEFAULT_POOL_SIZE = 4000
DEFAULT_POOL_SEED = 1
DEFAULT_OUT = 'work_dirs/encoders/standin-clip_vit-ti16-112_synthetic-pool.pt'
DEFAULT_ARCH = 'mmmaps-ViT-Ti-16-112'
REFERENCE_ARCH = 'ViT-S-16'  # the random-init tower of the earlier tiny memory


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--pool', default=None,
                        help='folder of unlabelled images (default: the generated '
                        f'{DEFAULT_POOL}/train, created when missing)')
    parser.add_argument('--pool-size', type=int, default=DEFAULT_POOL_SIZE,
                        help='images of the generated default pool')
    parser.add_argument('--out', default=DEFAULT_OUT, help='checkpoint file to write')
    parser.add_argument('--arch', default=DEFAULT_ARCH,
                        help='open_clip architecture, or mmmaps-ConvNet-MaxPool-112')
    parser.add_argument('--steps', type=int, default=150)
    parser.add_argument('--batch-size', type=int, default=128, help='images per step')
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--temperature', type=float, default=0.5)
    parser.add_argument('--min-crop-scale', type=float, default=0.5,
                        help='smallest area fraction of a random crop')
    parser.add_argument('--tint', type=float, default=25.0,
                        help='per-channel colour offset range of the views (0-255 scale)')
    parser.add_argument('--captions', default=None,
                        help='COCO JSON whose images carry a `scene` field: each pool image '
                        '(matched by file name) gets its scene type as caption and is also '
                        "trained with CLIP's image-to-caption term, the stand-in for what "
                        'CLIP learns from text (default: unlabelled, SimCLR only)')
    parser.add_argument('--caption-temperature', type=float, default=0.1)
    parser.add_argument('--simclr-weight', type=float, default=1.0,
                        help='weight of the SimCLR term; 0 (with --captions) trains the caption '
                        'term alone')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--load-size', type=int, default=128,
                        help='pool images are resized/cropped to this square on loading')
    parser.add_argument('--eval-ann', default='data/synthetic/annotations/panoptic_train.json',
                        help='COCO panoptic JSON whose images carry a `scene` field: scene-'
                        'retrieval quality is measured on them (skipped if missing)')
    parser.add_argument('--eval-images', default=None,
                        help='image folder of --eval-ann (default: data/synthetic/<split>)')
    parser.add_argument('--no-reference', action='store_true',
                        help=f'do not measure the random-init {REFERENCE_ARCH} reference')
    parser.add_argument('--force', action='store_true',
                        help='retrain even if up to date, replacing OUT and OUT.json when '
                        'they are a checkpoint and its record this tool wrote (anything else '
                        'at OUT is refused, with or without --force)')
    return parser.parse_args(argv)


def pool_digest(files):
    """sha256 over the pool's file names and contents (the pool's identity)."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(osp.basename(path).encode() + b'\0')
        with open(path, 'rb') as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def pool_captions(files, ann_file):
    """(caption index per pool file, sorted caption names) from ``ann_file``'s `scene`
    fields, matched by file name; every pool file must have one."""
    from mmmaps.memory.encoders.self_supervised import load_scene_labels
    paths, scenes = load_scene_labels(ann_file, '')
    scene_of = dict(zip(map(osp.basename, paths), scenes))
    pool_scenes = [scene_of.get(osp.basename(f)) for f in files]
    missing = [osp.basename(f) for f, scene in zip(files, pool_scenes) if scene is None]
    if missing:
        sys.exit(f'pretrain_encoder.py: error: --captions {ann_file} has no image named '
                 f'{missing[0]} ({len(missing)} of the {len(files)} pool images have no '
                 'caption); give the annotation file of the pool')
    names = sorted(set(pool_scenes))
    return [names.index(scene) for scene in pool_scenes], names


def ensure_default_pool(size):
    from mmmaps.datasets.synthetic_panoptic import generate_synthetic_panoptic
    from mmmaps.utils.output_dirs import OutputOwnershipError
    kwargs = dict(num_train=size, num_val=1, seed=DEFAULT_POOL_SEED, progress=True)
    try:
        meta = generate_synthetic_panoptic(DEFAULT_POOL, **kwargs)
    except OutputOwnershipError:
        # the default pool is this tool's cache: one of other parameters is regenerated
        # (a folder that is not a generated dataset is still refused)
        try:
            meta = generate_synthetic_panoptic(DEFAULT_POOL, force=True, **kwargs)
        except OutputOwnershipError as err:
            sys.exit(f'pretrain_encoder.py: error: {err}')
    print(f'pool: {DEFAULT_POOL}/train ({size} generated images, seed {DEFAULT_POOL_SEED}, '
          f'{"reused" if meta["reused"] else "generated"})')
    return osp.join(DEFAULT_POOL, 'train')


def measure_quality(args, out, image_size):
    from mmmaps.memory.encoders.self_supervised import (encode_image_files, load_scene_labels,
                                                        scene_retrieval_quality)
    image_dir = args.eval_images or osp.join(
        osp.dirname(osp.dirname(args.eval_ann)),
        osp.splitext(osp.basename(args.eval_ann))[0].replace('panoptic_', ''))
    files, labels = load_scene_labels(args.eval_ann, image_dir)
    rows = {
        'stand-in (pretrained)': dict(key_encoder_cfg(args.arch, image_size), pretrained=out),
        'same arch, random init': dict(key_encoder_cfg(args.arch, image_size), pretrained=None,
                                       seed=args.seed),
    }
    if not args.no_reference:
        rows[f'{REFERENCE_ARCH}, random init'] = dict(type='CLIPCLSEncoder',
                                                      arch=REFERENCE_ARCH, seed=0)
    quality = {}
    for name, cfg in rows.items():
        quality[name] = scene_retrieval_quality(encode_image_files(cfg, files), labels, k=5)
    return dict(eval_ann=args.eval_ann, rows=quality)


def key_encoder_cfg(arch, image_size):
    """The memory key encoder config of a stand-in of ``arch`` (without its weights)."""
    from mmmaps.memory.encoders.convnet import CONVNET_ARCHS
    if arch in CONVNET_ARCHS:
        return dict(type='ConvNetMaxPoolEncoder', arch=arch)
    return dict(type='CLIPCLSEncoder', arch=arch, image_size=image_size)


def build_tower(arch, seed):
    """(the image tower to train, the module whose state dict is saved) of ``arch``."""
    from mmmaps.memory.encoders.convnet import CONVNET_ARCHS, build_convnet
    from mmmaps.memory.encoders.self_supervised import build_open_clip_model
    if arch in CONVNET_ARCHS:
        tower = build_convnet(arch, seed)
        return tower, tower
    model = build_open_clip_model(arch, seed)
    return model.visual, model


def print_quality(quality):
    print(f'\nScene retrieval on {quality["eval_ann"]} (each image queries the others):')
    header = f'{"encoder":28s} {"P@5":>6s} {"chance":>7s} {"mAP":>6s} {"top-1 cos":>9s} ' \
             f'{"5th cos":>8s} {"random":>7s} {"spread":>7s}'
    print(header)
    for name, q in quality['rows'].items():
        print(f'{name:28s} {q["precision_at_k"]:6.3f} {q["chance"]:7.3f} '
              f'{q["mean_average_precision"]:6.3f} '
              f'{q["top1_similarity"]:9.4f} {q["kth_similarity"]:8.4f} '
              f'{q["random_pair_similarity"]:7.4f} {q["spread"]:7.4f}')


def save_state_dict(state_dict, path, meta):
    """torch.save through a buffer (the zip archive is then always named 'archive', not after
    a temporary file: equal weights give byte-identical files), written atomically after its
    record ``path.json`` (``meta`` plus the checkpoint's sha256, returned), so that whatever
    this tool leaves at ``path`` is named by a record."""
    import io
    import torch
    from mmmaps.memory.storage import sha256_bytes, write_bytes, write_json
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    meta = dict(meta, checkpoint_sha256=sha256_bytes(buffer.getvalue()))
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    write_json(path + '.json', meta)
    write_bytes(path, buffer.getvalue())
    return meta


def check_out_file(out, force):
    """Message why ``out`` may not be written, or None.

    ``out`` written here has its record ``out.json`` beside it (the training ``params`` and
    the checkpoint's sha256). Such a pair is replaced only with ``force``; anything else at
    either path (a file of the user's, a checkpoint changed since it was written, a folder,
    a link) is never replaced.
    """
    meta_file = out + '.json'
    for path in (out, meta_file):
        if osp.isdir(path) or osp.islink(path):
            return (f'refusing to write {path}: it is a '
                    f'{"symbolic link" if osp.islink(path) else "folder"}, not a checkpoint '
                    'written by this tool; nothing was changed. Choose another --out')
    if not (osp.lexists(out) or osp.lexists(meta_file)):
        return None
    reason = not_written_here(out)
    if reason:
        return (f'refusing to overwrite {out} / {meta_file}: {reason}, so they are not a '
                'checkpoint and its record written by this tool; nothing was changed (even '
                'with --force). Choose another --out, or move them away yourself')
    return None


def not_written_here(out):
    """Why ``out`` and ``out.json`` are not this tool's checkpoint and record ('' if they are)."""
    from mmmaps.memory.storage import sha256_file
    meta_file = out + '.json'
    if not osp.isfile(meta_file):
        return f'{meta_file} does not exist'
    try:
        with open(meta_file) as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        return f'{meta_file} is not readable JSON ({err})'
    if not isinstance(meta, dict) or not isinstance(meta.get('params'), dict) or not isinstance(
            meta.get('checkpoint_sha256'), str):
        return f'{meta_file} has no training params and checkpoint_sha256'
    if osp.isfile(out) and sha256_file(out) != meta['checkpoint_sha256']:
        return f'{out} is not the file whose sha256 {meta_file} records (changed since)'
    return ''


def main(argv=None):
    args = parse_args(argv)
    refusal = check_out_file(args.out, args.force)
    if refusal:
        sys.exit(f'pretrain_encoder.py: error: {refusal}')
    if args.simclr_weight == 0 and not args.captions:  # before the pool is read and hashed
        sys.exit('pretrain_encoder.py: error: --simclr-weight 0 needs --captions (nothing '
                 'would be trained)')
    import torch
    from mmmaps.memory.encoders.self_supervised import (list_images, load_image_pool,
                                                        pretrain_clip_visual, tower_image_size)
    from mmmaps.memory.storage import write_json

    pool_dir = args.pool or ensure_default_pool(args.pool_size)
    files = list_images(pool_dir)
    params = dict(arch=args.arch, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                  temperature=args.temperature, min_crop_scale=args.min_crop_scale,
                  tint=args.tint, seed=args.seed, load_size=args.load_size,
                  pool_digest=pool_digest(files), pool_images=len(files),
                  objective='SimCLR NT-Xent, 2 views/image')
    if args.simclr_weight != 1.0:  # recorded only when set, so older records stay current
        params.update(simclr_weight=args.simclr_weight)
    captions = None
    if args.captions:
        captions, names = pool_captions(files, args.captions)
        params.update(objective=('image-to-caption, 2 views/image' if args.simclr_weight == 0
                                 else 'SimCLR NT-Xent + image-to-caption, 2 views/image'),
                      caption_names=names, caption_temperature=args.caption_temperature,
                      captions_digest=hashlib.sha256(json.dumps(
                          [names[c] for c in captions]).encode()).hexdigest())
    meta_file = args.out + '.json'
    if not args.force and osp.isfile(args.out):  # written here (check_out_file)
        with open(meta_file) as f:
            meta = json.load(f)
        if meta.get('params') == params:
            print(f'stand-in encoder up to date: {args.out} (pretrained in '
                  f'{meta["train_seconds"]:.0f} s; --force to retrain)')
            if 'quality' in meta:
                print_quality(meta['quality'])
            return 0
    print(f'pretraining {args.arch} on {len(files)} '
          f'{"captioned" if captions else "unlabelled"} images of {pool_dir} '
          f'({args.steps} steps x {args.batch_size} images, 2 views each, '
          f'{torch.get_num_threads()} threads)')
    pool = load_image_pool(files, args.load_size)
    tower, saved = build_tower(args.arch, args.seed)
    start = time.time()
    losses = pretrain_clip_visual(tower, pool, args.steps, args.batch_size, args.seed,
                                  lr=args.lr, temperature=args.temperature,
                                  crop_scale=(args.min_crop_scale, 1.0), tint=args.tint,
                                  captions=None if captions is None else torch.tensor(captions),
                                  caption_temperature=args.caption_temperature,
                                  simclr_weight=args.simclr_weight)
    seconds = time.time() - start
    meta = save_state_dict(saved.state_dict(), args.out, dict(
        params=params, pool=osp.abspath(pool_dir), train_seconds=seconds,
        threads=torch.get_num_threads(), loss_first=losses[0], loss_last=losses[-1],
        losses_every_10=losses[::10]))
    print(f'pretrained in {seconds:.0f} s: loss {losses[0]:.3f} -> {losses[-1]:.3f}; '
          f'wrote {args.out}')
    if args.eval_ann and osp.isfile(args.eval_ann):
        meta['quality'] = measure_quality(args, args.out, tower_image_size(tower))
        print_quality(meta['quality'])
    write_json(meta_file, meta)
    return 0


if __name__ == '__main__':
    sys.exit(main())
