"""Key similarity of near-duplicates vs distinct images: the threshold of the leak audit.

    python benchmarks/near_duplicate_similarity.py [--standin FILE] [--publish]

The memory's leak guard compares image *content* (sha256 of the file), so a val image
re-saved as JPEG or resized and appended to the memory is another picture to it, yet the
val image then retrieves its own copy. ``tools/analysis/audit_memory.py`` reports such
``near_duplicates`` and the MemoryHook warns at test time when a retrieval scores at or above
``mmmaps.memory.retriever.NEAR_DUPLICATE_SIMILARITY``; this script measures what that
threshold separates.

For every val image of two generated synthetic sets (the README's 128x128 set, 200 train /
50 val, seed 0, and the test suite's 64x64 set, 8 train / 4 val, seed 1), with the key
encoder of each memory config (what the banks and the queries hold):

- ``variants``: cosine similarity between the key of the image and the key of a copy a
  user may have put in a memory: re-saved as JPEG q97 and q90, resized 0.9x and 1.1x
  (bicubic, saved losslessly as PNG, so the resize alone is measured);
- ``distinct``: the largest cosine similarity between the image's key and the key of any
  *other* image of the set (val to train, and train to other train images): the nearest
  distinct image, what a retrieval legitimately scores at most.

Encoders: the tiny memory's random-init ViT-S/16 CLS encoder
(configs/memory/memory_tiled-clip_vit-s16_synthetic-panoptic.py, what the tests use) and the
pretrained stand-in mmmaps-ViT-Ti-16-112 (configs/_base_/encoders/synthetic_standin-clip.py;
its checkpoint is written by tools/pretrain_encoder.py, skipped with a note when missing).

Writes ``benchmarks/results/near_duplicate_similarity.{json,md}`` with ``--publish``.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import json
import os.path as osp
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_MEMORY = osp.join(REPO, 'configs', 'memory', 'memory_tiled-clip_vit-s16_synthetic-panoptic.py')
STANDIN = osp.join(REPO, 'configs', '_base_', 'encoders', 'synthetic_standin-clip.py')
SETS = dict(readme=dict(num_train=200, num_val=50, seed=0, size=(128, 128)),
            tests=dict(num_train=8, num_val=4, seed=1, size=(64, 64)))


def variants(image_bgr: np.ndarray, folder: str, stem: str) -> dict:
    """The copies of one image a user may have appended to a memory: name -> file."""
    out = {}
    for quality in (97, 90):
        path = osp.join(folder, f'{stem}_q{quality}.jpg')
        cv2.imwrite(path, image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        out[f'jpeg_q{quality}'] = path
    height, width = image_bgr.shape[:2]
    for scale in (0.9, 1.1):
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        path = osp.join(folder, f'{stem}_x{scale}.png')
        cv2.imwrite(path, cv2.resize(image_bgr, size, interpolation=cv2.INTER_CUBIC))
        out[f'resize_{scale}x'] = path
    return out


def keys_of(encoder, paths, batch: int = 16) -> np.ndarray:
    """(N, D) L2-normalised keys of image files, as the memory builder encodes them."""
    out = []
    for start in range(0, len(paths), batch):
        images = [torch.from_numpy(np.ascontiguousarray(
            cv2.imread(p, cv2.IMREAD_COLOR)[..., ::-1].transpose(2, 0, 1)))
            for p in paths[start:start + batch]]
        with torch.no_grad():
            out.append(encoder(images).float().numpy())
    return np.concatenate(out)


CANDIDATES = (0.99, 0.995, 0.999, 0.9995, 0.9997)


def summary(values) -> dict:
    """Distribution of similarities, and the fraction at or above each candidate threshold."""
    values = np.asarray(values, np.float64)
    return dict(n=int(values.size), min=float(values.min()), p1=float(np.percentile(values, 1)),
                median=float(np.median(values)), p99=float(np.percentile(values, 99)),
                max=float(values.max()),
                at_or_above={str(t): float(np.mean(values >= t)) for t in CANDIDATES})


def measure(encoder, root: str, scratch: str) -> dict:
    with open(osp.join(root, 'annotations', 'panoptic_train.json')) as f:
        train = [osp.join(root, 'train', im['file_name']) for im in json.load(f)['images']]
    with open(osp.join(root, 'annotations', 'panoptic_val.json')) as f:
        val = [osp.join(root, 'val', im['file_name']) for im in json.load(f)['images']]
    train_keys, val_keys = keys_of(encoder, train), keys_of(encoder, val)
    copies = {}
    for i, path in enumerate(val):
        for name, file in variants(cv2.imread(path, cv2.IMREAD_COLOR), scratch, f'v{i}').items():
            copies.setdefault(name, []).append(file)
    result = dict(variants={}, distinct={})
    for name, files in copies.items():
        sims = np.sum(keys_of(encoder, files) * val_keys, axis=1)
        result['variants'][name] = summary(sims)
    train_train = train_keys @ train_keys.T
    np.fill_diagonal(train_train, -np.inf)
    result['distinct']['val_to_train'] = summary((val_keys @ train_keys.T).max(axis=1))
    result['distinct']['train_to_train'] = summary(train_train.max(axis=1))
    lowest_copy = min(v['min'] for v in result['variants'].values())
    highest_distinct = max(v['max'] for v in result['distinct'].values())
    result.update(lowest_copy=lowest_copy, highest_distinct=highest_distinct,
                  separable=lowest_copy > highest_distinct)
    return result


def encoders(standin: str):
    """name -> (memory.key_encoder config, note)."""
    from mmengine.config import Config
    tiny = Config.fromfile(TINY_MEMORY).memory.key_encoder.to_dict()
    standin_cfg = Config.fromfile(STANDIN).standin_memory['key_encoder']
    standin_cfg = dict(standin_cfg.to_dict() if hasattr(standin_cfg, 'to_dict') else standin_cfg,
                       type='CLIPCLSEncoder',
                       pretrained=osp.abspath(standin or osp.join(REPO,
                                                                  standin_cfg['pretrained'])))
    return {'tiny ViT-S/16 (random init, seed 0)': tiny,
            'stand-in mmmaps-ViT-Ti-16-112 (pretrained)': standin_cfg}


def markdown(report: dict) -> str:
    from mmmaps.memory.retriever import NEAR_DUPLICATE_SIMILARITY
    lines = ['# Key similarity of near-duplicates vs distinct images', '',
             '`python benchmarks/near_duplicate_similarity.py --publish` '
             f'({report["date"]}, torch {report["torch"]}). Cosine similarity of memory keys; '
             'a variant is compared with its own original, "distinct" is the largest '
             'similarity of an image to any other image of its set. Threshold in use: '
             f'`NEAR_DUPLICATE_SIMILARITY = {NEAR_DUPLICATE_SIMILARITY}` '
             '(mmmaps/memory/retriever.py).', '']
    for encoder, sets in report['encoders'].items():
        if 'skipped' in sets:
            lines += [f'## {encoder}', '', f'skipped: {sets["skipped"]}', '']
            continue
        lines += [f'## {encoder}', '', '| set | compared | min | 1 % | median | 99 % | max | '
                  + ' | '.join(f'>= {t}' for t in CANDIDATES) + ' |',
                  '|---|---|---|---|---|---|---|' + '---|' * len(CANDIDATES)]
        for name, result in sets.items():
            for group in ('variants', 'distinct'):
                for what, s in result[group].items():
                    lines.append(f'| {name} | {group}: {what} | {s["min"]:.5f} | {s["p1"]:.5f} | '
                                 f'{s["median"]:.5f} | {s["p99"]:.5f} | {s["max"]:.5f} | '
                                 + ' | '.join(f'{100 * s["at_or_above"][str(t)]:.0f} %'
                                              for t in CANDIDATES) + ' |')
            lines.append(f'| {name} | **lowest copy / highest distinct** | '
                         f'{result["lowest_copy"]:.5f} | | | | {result["highest_distinct"]:.5f} |'
                         + ' |' * len(CANDIDATES))
        lines.append('')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--standin', help='stand-in checkpoint (default: the one of '
                        'configs/_base_/encoders/synthetic_standin-clip.py)')
    parser.add_argument('--publish', action='store_true',
                        help='write benchmarks/results/near_duplicate_similarity.{json,md}')
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get('OMP_NUM_THREADS', '2'))))
    from mmmaps.datasets import generate_synthetic_panoptic
    from mmmaps.memory.encoders import build_memory_encoder
    report = dict(date=time.strftime('%Y-%m-%d'), torch=torch.__version__, sets=SETS,
                  encoders={})
    with tempfile.TemporaryDirectory() as scratch:
        roots = {}
        for name, params in SETS.items():
            roots[name] = osp.join(scratch, name)
            generate_synthetic_panoptic(roots[name], progress=False, **params)
        for label, cfg in encoders(args.standin).items():
            if cfg.get('pretrained') and not osp.isfile(cfg['pretrained']):
                report['encoders'][label] = dict(
                    skipped=f'{cfg["pretrained"]} missing (python tools/pretrain_encoder.py)')
                continue
            encoder = build_memory_encoder(cfg, 'memory.key_encoder').eval()
            report['encoders'][label] = {}
            for name, root in roots.items():
                folder = osp.join(scratch, f'copies_{name}_{len(report["encoders"])}')
                os.makedirs(folder)
                report['encoders'][label][name] = measure(encoder, root, folder)
                result = report['encoders'][label][name]
                print(f'{label} / {name}: lowest copy {result["lowest_copy"]:.5f}, highest '
                      f'distinct {result["highest_distinct"]:.5f}', flush=True)
    print(json.dumps(report, indent=1))
    if args.publish:
        out = osp.join(REPO, 'benchmarks', 'results', 'near_duplicate_similarity')
        with open(out + '.json', 'w') as f:
            json.dump(report, f, indent=1)
        with open(out + '.md', 'w') as f:
            f.write(markdown(report))
        print(f'wrote {out}.json and {out}.md')


if __name__ == '__main__':
    main()
