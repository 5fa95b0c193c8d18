"""Show what a MAPS memory retrieves for the images of a split (MAPS paper Fig. 3/4).

    python tools/analysis/show_retrievals.py CONFIG --out grid.png [--split val] \
        [--num 8 | --ids ID ...] [--k 5] [--bank DIR] [--tile 128]
    python tools/analysis/show_retrievals.py CONFIG --out objects.png --objects \
        [--num-segments 2 [--things-only] | --segments IMG_ID:SEG_ID ...] [--top 5]

Scenes (default): one row per query image (the first ``--num`` images of the config's
``<split>_dataloader`` dataset, or ``--ids``) followed by the k scenes retrieved for it,
captioned with their image ids and similarities. The memory is the config's, built by
``mmmaps.memory.build_external_memory`` exactly as for a run: the query key comes from a
query cache that holds the image (by file content: ``ROOT`` and ``ROOT_val``/``ROOT_test``
from ``tools/build_memory.py --split val --query-cache-only``), else from the memory's key
encoder on the image. Train-split queries follow the training policy (a query never
retrieves its own picture), other splits the evaluation policy (nothing excluded).

Objects (``--objects``): one row per chosen ground-truth segment of a query (its
``--num-segments`` largest, or ``--segments``): the query with the segment marked,
then the ``--top`` objects of the retrieved object memory (the objects of the k
retrieved scenes, as the model receives them) most similar to the segment; the
similarity is the cosine between the segment's feature, pooled from the memory's dense
encoder like the bank's values, and each object's stored value. Each object is shown as
the box of its segment in its source image (bank metadata + source panoptic
annotation), labelled with its category.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../../..'))  # noqa (this checkout first)

import argparse
import os.path as osp
import sys
from collections import OrderedDict

import numpy as np
from mmengine.config import Config, DictAction


class ViewerError(ValueError):
    """A usage error reported without a traceback."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='a MAPS (or memory) config with a `memory` section')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--bank', help='memory directory (default: memory.root of the config)')
    parser.add_argument('--split', default='val', choices=['train', 'val', 'test'],
                        help='split of the query images (default: val)')
    parser.add_argument('--num', type=int, default=8, help='first N images of the split')
    parser.add_argument('--ids', type=int, nargs='+', help='query image ids instead of --num')
    parser.add_argument('--k', type=int, help='scenes per query (default: memory.retrieval.k)')
    parser.add_argument('--objects', action='store_true',
                        help='retrieved objects of chosen query segments instead of scenes')
    parser.add_argument('--num-segments', type=int, default=2,
                        help='--objects: the largest N ground-truth segments of each query')
    parser.add_argument('--things-only', action='store_true',
                        help='--objects: choose among thing segments only')
    parser.add_argument('--segments', nargs='+', metavar='IMG_ID:SEG_ID',
                        help='--objects: these segments (panoptic segment ids) instead')
    parser.add_argument('--top', type=int,
                        help='--objects: objects shown per segment (default: k)')
    parser.add_argument('--tile', type=int, default=128, help='tile size in pixels')
    parser.add_argument('--no-cache', action='store_true',
                        help='always encode the query images (ignore query caches)')
    parser.add_argument('--device', help='encoder device (default: cuda when available)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy format')
    return parser.parse_args(argv)


def _parse_segments(items):
    chosen = OrderedDict()
    for item in items or []:
        try:
            image_id, segment_id = (int(v) for v in item.split(':'))
        except ValueError:
            raise ViewerError(f'--segments takes IMG_ID:SEG_ID, got {item!r}') from None
        chosen.setdefault(image_id, []).append(segment_id)
    return chosen


def _select_records(records, args, chosen_segments):
    by_id = {r['img_id']: r for r in records}
    ids = args.ids or (list(chosen_segments) if chosen_segments else None)
    if ids is None:
        if args.num < 1:
            raise ViewerError(f'--num must be >= 1, got {args.num}')
        return records[:args.num]
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ViewerError(f'image ids {missing} are not in the {args.split} dataset of '
                          f'{args.config} ({len(records)} images, ids {records[0]["img_id"]}..'
                          f'{records[-1]["img_id"]})')
    return [by_id[i] for i in ids]


class Viewer:
    """Loads the memory and encoders once; draws rows for query records."""

    def __init__(self, cfg, args):
        import torch

        from mmmaps.apis import BankImages, SourceSegments
        from mmmaps.memory import build_external_memory
        from mmmaps.memory.build_plan import memory_cfg_of
        from mmmaps.memory.dataset_records import load_panoptic_records
        from mmmaps.memory.encoders import build_memory_encoder
        from mmmaps.memory.memory_root import ENCODER_IDENTITY

        self.args = args
        self.cfg = cfg
        memory_cfg = memory_cfg_of(cfg)
        # the top-k as the model sees it at test time (no k' sampling); --k overrides k
        retrieval = dict(memory_cfg.get('retrieval') or {}, random_sampling=None)
        if args.k is not None:
            if args.k < 1:
                raise ViewerError(f'--k must be >= 1, got {args.k}')
            retrieval['k'] = args.k
        memory_cfg['retrieval'] = retrieval
        self.records, self.source = load_panoptic_records(cfg, args.split)
        self.device = torch.device(args.device or
                                   ('cuda' if torch.cuda.is_available() else 'cpu'))
        self.memory = build_external_memory(memory_cfg, root=args.bank, device=self.device,
                                            query_caches=not args.no_cache)
        self.k = self.memory.k
        self.images = BankImages(cfg, self.memory.root)
        self.bank_classes = list(self.memory.root.source.get('classes') or
                                 self.source['classes'])
        self.query_classes = list(self.source['classes'])
        self.dense_encoder = self.segments = None
        if args.objects:
            object_bank = self.memory.root.object_bank
            if object_bank is None:
                raise ViewerError(f'--objects needs an object bank; the memory at '
                                  f'{self.memory.root.root} has none (memory.dense_encoder was '
                                  'None when it was built)')
            dense_cfg = memory_cfg.get('dense_encoder')
            if not dense_cfg:
                raise ViewerError('--objects needs memory.dense_encoder in the config (to pool '
                                  'the query segments like the bank\'s objects)')
            self.dense_encoder = build_memory_encoder(dense_cfg).to(self.device)
            built, recorded = self.dense_encoder.describe(), self.memory.root.dense_encoder or {}
            fields = [f'{f}: memory {recorded.get(f)!r}, config {built.get(f)!r}'
                      for f in ENCODER_IDENTITY if built.get(f) != recorded.get(f)]
            if fields:
                raise ViewerError(
                    f'the dense encoder of the config does not match the one the memory at '
                    f'{self.memory.root.root} was built with (' + '; '.join(fields) + '); '
                    'rebuild the memory with tools/build_memory.py CONFIG or pass the config '
                    'it was built from')
            self.segments = SourceSegments(self.images)
        self._bank_image_cache = OrderedDict()

    # ------------------------------------------------------------------ retrieval
    @property
    def training_policy(self) -> bool:
        """Queries of the train split are retrieved as in training (never their own
        picture); other splits as at test time (nothing excluded)."""
        return self.args.split == 'train'

    def describe(self) -> str:
        caches = ', '.join(c.path for c in self.memory.caches) or 'none'
        policy = ('training policy: a query never retrieves its own picture (by file content)'
                  if self.training_policy else
                  'evaluation policy: nothing excluded (an image in the memory retrieves itself)')
        return (f'queries: {self.args.split} split; keys from the query caches by content '
                f'({caches}), else the key encoder {self.memory.root.key_encoder.get("type")} '
                f'{self.memory.root.key_encoder.get("arch")}; k={self.k}; {policy}')

    def retrieve(self, record, image):
        import torch
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        return self.memory.retrieve([tensor.to(self.device)], [record['img_path']],
                                    training=self.training_policy,
                                    with_objects=self.args.objects, whole_pictures=[True])

    def bank_image(self, image_id: int) -> np.ndarray:
        if image_id not in self._bank_image_cache:
            if len(self._bank_image_cache) > 64:
                self._bank_image_cache.popitem(last=False)
            self._bank_image_cache[image_id] = self.images.read(image_id)
        return self._bank_image_cache[image_id]

    # ------------------------------------------------------------------ rows
    def scene_row(self, record, image, result):
        from mmmaps.apis.visualization import hstack, tile
        size = self.args.tile
        tiles = [tile(image, size, [f'query id {record["img_id"]}',
                                    osp.basename(record['file_name'])])]
        found = []
        for rank, (image_id, score) in enumerate(zip(result.image_ids[0].tolist(),
                                                     result.scores[0].tolist())):
            if image_id < 0:
                continue
            found.append((image_id, score))
            tiles.append(tile(self.bank_image(image_id), size,
                              [f'#{rank + 1} id {image_id}', f'sim {score:.3f}']))
        return hstack(tiles), found

    def choose_segments(self, record, id_map, chosen):
        present, areas = np.unique(id_map, return_counts=True)
        area_of = dict(zip(present.tolist(), areas.tolist()))
        segments = [s for s in record['segments'] if area_of.get(s[0], 0) > 0]
        if chosen is not None:
            known = {s[0]: s for s in segments}
            missing = [s for s in chosen if s not in known]
            if missing:
                raise ViewerError(f'segments {missing} are not in image {record["img_id"]} '
                                  f'(its segments: {sorted(known)})')
            return [known[s] + (area_of[s],) for s in chosen]
        if self.args.things_only:
            segments = [s for s in segments if s[2]]
        segments = sorted(segments, key=lambda s: -area_of[s[0]])[:self.args.num_segments]
        return [s + (area_of[s[0]],) for s in segments]

    def object_rows(self, record, image, result, chosen):
        import torch

        from mmmaps.apis import encode_images, retrieved_objects
        from mmmaps.apis.visualization import (crop_box, draw_box, hstack, read_rgb, tile,
                                               tint_mask)
        from mmmaps.memory.segment_pooling import pool_segments, rgb_to_panoptic_id

        size, top = self.args.tile, self.args.top or self.k
        id_map = rgb_to_panoptic_id(read_rgb(record['seg_map_path'], 'panoptic PNG'))
        if id_map.shape != image.shape[:2]:
            raise ViewerError(f'{record["seg_map_path"]} is {id_map.shape}, its image '
                              f'{record["img_path"]} is {image.shape[:2]}')
        segments = self.choose_segments(record, id_map, chosen)
        if not segments:
            return [], []
        dense = encode_images(self.dense_encoder, [image])[0]
        pooled, valid, _ = pool_segments(dense, torch.from_numpy(id_map).to(dense.device),
                                         [s[0] for s in segments])
        pooled = pooled.float().cpu().numpy()
        object_bank = self.memory.root.object_bank
        objects = retrieved_objects(object_bank, result, 0, self.memory.retriever.max_objects)
        values = np.asarray(object_bank.values[
            [o['value_index'] for o in objects]], np.float32).reshape(len(objects), -1)
        values /= np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
        rows, text = [], []
        for (segment_id, label, _, area), feature, ok in zip(segments, pooled, valid.tolist()):
            mask = id_map == segment_id
            ys, xs = np.nonzero(mask)
            box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            marked = draw_box(tint_mask(image, mask), box)
            name = self.query_classes[label]
            tiles = [tile(marked, size, [f'id {record["img_id"]} seg {segment_id}',
                                         f'{name} ({area} px)'])]
            sims = values @ feature if (ok and len(objects)) else np.zeros(len(objects))
            order = np.argsort(-sims, kind='stable')[:top]
            shown = []
            for j in order:
                obj = objects[j]
                crop = crop_box(self.bank_image(obj['image_id']),
                                self.segments.bbox(obj['image_id'], obj['segment_id']))
                category = self.bank_classes[obj['category_id']]
                tiles.append(tile(crop, size, [f'{category} (id {obj["image_id"]})',
                                               f'sim {sims[j]:.3f} #{obj["rank"] + 1}']))
                shown.append(f'{category}@{obj["image_id"]} {sims[j]:.3f}')
            rows.append(hstack(tiles))
            text.append(f'  query {record["img_id"]} segment {segment_id} ({name}): '
                        f'{len(objects)} retrieved objects; top: ' + ', '.join(shown))
        return rows, text


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config {args.config} does not exist')
    if args.segments and not args.objects:
        raise ViewerError('--segments needs --objects')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)

    from mmengine.utils import ProgressBar

    from mmmaps.apis import read_rgb, write_png_atomic
    from mmmaps.apis.visualization import vstack

    chosen_segments = _parse_segments(args.segments)
    viewer = Viewer(cfg, args)
    records = _select_records(viewer.records, args, chosen_segments)
    print(viewer.describe())
    bar = None if args.no_progress or len(records) < 2 else ProgressBar(len(records))
    rows, lines = [], []
    for record in records:
        image = read_rgb(record['img_path'], f'{args.split} image')
        result = viewer.retrieve(record, image)
        if args.objects:
            new_rows, text = viewer.object_rows(record, image, result,
                                                chosen_segments.get(record['img_id']))
            rows += new_rows
            lines += text or [f'  query {record["img_id"]}: no segments to show']
        else:
            row, found = viewer.scene_row(record, image, result)
            rows.append(row)
            lines.append(f'  query {record["img_id"]}: ' + ', '.join(
                f'{i} ({s:.3f})' for i, s in found))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.file.write('\n')
    if not rows:
        raise ViewerError('nothing to draw: no query had a segment to show')
    print('\n'.join(lines))
    grid = vstack(rows)
    write_png_atomic(args.out, grid)
    what = 'segment' if args.objects else 'query'
    print(f'wrote {args.out} ({grid.shape[1]}x{grid.shape[0]}, {len(rows)} {what} rows)')
    return grid


if __name__ == '__main__':
    from mmmaps.memory.bank import MemoryBankError
    try:
        main()
    except (ViewerError, FileNotFoundError, MemoryBankError) as exc:
        sys.exit(f'show_retrievals.py: error: {exc}')
