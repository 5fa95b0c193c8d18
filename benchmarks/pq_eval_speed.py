"""PQ evaluation speed: panopticapi vs mmdet's reimplementation vs hotcoco, same files.

    python benchmarks/pq_eval_speed.py [--num-images 1000] [--size 64] [--nproc N]
        [--reps 3] [--work-dir DIR]

Generates a synthetic panoptic val split (``--num-images`` images, ``--size`` square),
writes predictions made from its ground truth with realistic errors (missed segments,
wrong classes, shifted masks, spurious segments) in COCO panoptic format (PNG + JSON),
then times on those files, each run in turn every repetition (median seconds):

* ``panopticapi``: ``panopticapi.evaluation.pq_compute``, the reference. It always
  starts ``multiprocessing.cpu_count()`` worker processes; for ``--nproc`` other than
  that, ``multiprocessing.cpu_count`` is patched to return ``--nproc`` while it runs.
* ``mmdet multi-core``: mmdet's ``pq_compute_multi_core`` with ``nproc=--nproc``
  (JSON reading and matching as in pq_compute), what ``FastCocoPanopticMetric``'s
  default backend (and mmdet's ``CocoPanopticMetric``) run with ``outfile_prefix``.
* ``mmdet single-core``: ``pq_compute_single_core`` image by image in this process,
  what the default backend runs inside ``process()`` without ``outfile_prefix``.
* ``hotcoco pq_compute``: ``hotcoco.panoptic.pq_compute``, its panopticapi drop-in,
  on a rayon pool of ``RAYON_NUM_THREADS=--nproc`` threads (set before hotcoco loads).
* ``hotcoco backend``: ``hotcoco_pq_compute`` from ``FastCocoPanopticMetric``
  (``PanopticEval`` + panopticapi's result shape), what ``backend='hotcoco'`` runs.

Prints a table of seconds and speed-ups vs panopticapi, and the largest absolute
difference from panopticapi over the 9 headline numbers (PQ/SQ/RQ of All/Things/Stuff)
and over the per-class PQ/SQ/RQ, as fractions (multiply by 100 for mmdet's percent).
All output of the evaluators themselves (their progress lines) is silenced.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import contextlib
import json
import os
import os.path as osp
import statistics
import sys
import tempfile
import time
from unittest import mock

import cv2
import numpy as np



def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--num-images', type=int, default=1000)
    parser.add_argument('--size', type=int, default=64, help='image side (64 or 128)')
    parser.add_argument('--nproc', type=int, default=len(os.sched_getaffinity(0)),
                        help='processes / threads for every backend (default: usable cores)')
    parser.add_argument('--reps', type=int, default=3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work-dir', help='keep the dataset and predictions here '
                        '(default: a temporary directory)')
    return parser.parse_args()


@contextlib.contextmanager
def silenced():
    """Send fd 1 and 2 to /dev/null (worker processes and Rust print there too)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)


def write_predictions(root, out_json, out_dir, seed):
    """Perturbed ground truth as COCO panoptic predictions (PNG + JSON)."""
    from panopticapi.utils import id2rgb, rgb2id
    rng = np.random.default_rng(seed)
    with open(osp.join(root, 'annotations', 'panoptic_val.json')) as f:
        gt = json.load(f)
    cat_ids = [c['id'] for c in gt['categories']]
    os.makedirs(out_dir, exist_ok=True)
    annotations = []
    for ann in gt['annotations']:
        png = cv2.imread(osp.join(root, 'annotations', 'panoptic_val', ann['file_name']))
        ids = rgb2id(png[..., ::-1])
        pred = np.zeros(ids.shape, np.int64)  # VOID
        cats = {}
        next_id = 1
        for seg in ann['segments_info']:
            r = rng.random()
            if r < 0.15:
                continue  # missed
            mask = ids == seg['id']
            cat = seg['category_id']
            if r < 0.3:
                cat = int(rng.choice(cat_ids))  # wrong class
            if r > 0.75:  # sloppy mask
                mask = np.roll(mask, int(rng.integers(1, 6)), axis=int(rng.integers(2)))
            pred[mask] = next_id
            cats[next_id] = cat
            next_id += 1
        if rng.random() < 0.3:  # a spurious blob
            h, w = pred.shape
            y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
            pred[y:y + 8, x:x + 8] = next_id
            cats[next_id] = int(rng.choice(cat_ids))
        present, areas = np.unique(pred, return_counts=True)
        segments = [dict(id=int(i), category_id=cats[int(i)], area=int(a))
                    for i, a in zip(present, areas) if i != 0]
        cv2.imwrite(osp.join(out_dir, ann['file_name']), id2rgb(pred)[..., ::-1])
        annotations.append(dict(image_id=ann['image_id'], file_name=ann['file_name'],
                                segments_info=segments))
    with open(out_json, 'w') as f:
        json.dump(dict(annotations=annotations), f)


def main():
    args = parse_args()
    # rayon reads this when its pool first starts: before hotcoco runs anything
    os.environ['RAYON_NUM_THREADS'] = str(args.nproc)
    import multiprocessing

    import panopticapi.evaluation as pe

    from mmdet.evaluation.functional import pq_compute_single_core
    from mmmaps.datasets import generate_synthetic_panoptic
    from mmmaps.evaluation.metrics.fast_panoptic_metric import (_average, hotcoco_pq_compute,
                                                                mmdet_pq_compute)
    try:
        import hotcoco
        import hotcoco.panoptic
    except ImportError:
        hotcoco = None

    tmp = None
    if args.work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix='pq_eval_speed-')
        work = tmp.name
    else:
        work = args.work_dir
    root = osp.join(work, 'data')
    t0 = time.perf_counter()
    generate_synthetic_panoptic(root, num_train=1, num_val=args.num_images, seed=args.seed,
                                size=(args.size, args.size), progress=False)
    gt_json = osp.join(root, 'annotations', 'panoptic_val.json')
    gt_folder = osp.join(root, 'annotations', 'panoptic_val')
    pred_json = osp.join(work, 'pred.panoptic.json')
    pred_folder = osp.join(work, 'pred.panoptic')
    write_predictions(root, pred_json, pred_folder, args.seed)
    with open(gt_json) as f:
        gt = json.load(f)
    n_segments = sum(len(a['segments_info']) for a in gt['annotations'])
    print(f'{args.num_images} images {args.size}x{args.size}, {n_segments} ground-truth '
          f'segments, {len(gt["categories"])} categories; data and predictions in '
          f'{time.perf_counter() - t0:.1f} s; cpu_count()={multiprocessing.cpu_count()}, '
          f'usable cores={len(os.sched_getaffinity(0))}, --nproc={args.nproc}')

    def panopticapi_run():
        with mock.patch.object(pe.multiprocessing, 'cpu_count', return_value=args.nproc):
            return pe.pq_compute(gt_json, pred_json, gt_folder=gt_folder,
                                 pred_folder=pred_folder)

    def mmdet_multi():
        return mmdet_pq_compute(gt_json, pred_json, gt_folder, pred_folder, nproc=args.nproc)

    def mmdet_single():
        with open(pred_json) as f:
            preds = {a['image_id']: a for a in json.load(f)['annotations']}
        categories = {c['id']: c for c in gt['categories']}
        from panopticapi.evaluation import PQStat
        pq_stat = PQStat()
        for gt_ann in gt['annotations']:  # one image per call, as process() does
            pq_stat += pq_compute_single_core(0, [(gt_ann, preds[gt_ann['image_id']])],
                                              gt_folder, pred_folder, categories)
        return _average(pq_stat, categories)

    def panopticapi_one():
        with mock.patch.object(pe.multiprocessing, 'cpu_count', return_value=1):
            return pe.pq_compute(gt_json, pred_json, gt_folder=gt_folder,
                                 pred_folder=pred_folder)

    runs = [('panopticapi pq_compute', f'{args.nproc} proc', panopticapi_run),
            ('mmdet pq_compute_multi_core', f'{args.nproc} proc', mmdet_multi),
            ('mmdet single-core, per image', '1 proc', mmdet_single)]
    if args.nproc != 1:  # the reference's own float rounding depends on its process count
        runs.insert(1, ('panopticapi pq_compute', '1 proc', panopticapi_one))
    if hotcoco is not None:
        runs += [
            ('hotcoco panoptic.pq_compute', f'{args.nproc} thr',
             lambda: hotcoco.panoptic.pq_compute(gt_json, pred_json, gt_folder=gt_folder,
                                                 pred_folder=pred_folder)),
            ('hotcoco backend (PanopticEval)', f'{args.nproc} thr',
             lambda: hotcoco_pq_compute(gt_json, pred_json, gt_folder, pred_folder))]
    else:
        print('hotcoco is not installed: its rows are left out')

    results, times = {}, {run[:2]: [] for run in runs}
    with silenced():  # warm-up (file cache, imports, rayon pool), keep the results
        for name, workers, fn in runs:
            results[name, workers] = fn()
    for _ in range(args.reps):
        for name, workers, fn in runs:
            with silenced():
                start = time.perf_counter()
                fn()
                times[name, workers].append(time.perf_counter() - start)

    ref = results[runs[0][:2]]
    ref_time = statistics.median(times[runs[0][:2]])
    names = {c['id']: c['name'] for c in gt['categories']}
    header = (f'{"backend":32s} {"workers":>8s} {"seconds":>8s} {"speed-up":>9s} '
              f'{"max|d headline|":>16s} {"max|d per-class|":>17s}  PQ')
    print(header)
    print('-' * len(header))
    worst, notes = 0.0, []
    for name, workers, _ in runs:
        res = results[name, workers]
        head = {f'{s}.{q}': res[s][q] - ref[s][q] for s in ('All', 'Things', 'Stuff')
                for q in ('pq', 'sq', 'rq')}
        # hotcoco's drop-in says -1.0 where panopticapi says 0.0 (no segment either side)
        cls = {f'{names[c]}.{q}': res['per_class'][c][q] - ref['per_class'][c][q]
               for c in ref['per_class'] for q in ('pq', 'sq', 'rq')
               if res['per_class'][c][q] >= 0}
        d_head = max(abs(v) for v in head.values())
        d_cls = max(abs(v) for v in cls.values())
        worst = max(worst, d_head, d_cls)
        t = statistics.median(times[name, workers])
        print(f'{name:32s} {workers:>8s} {t:8.3f} {ref_time / t:8.2f}x {d_head:16.3g} '
              f'{d_cls:17.3g}  {100 * res["All"]["pq"]:.10f}')
        differ = {k: v for k, v in {**head, **cls}.items() if v != 0}
        if differ:
            kinds = sorted({k.rsplit('.', 1)[1] for k in differ})
            top = max(differ, key=lambda k: abs(differ[k]))
            notes.append(f'  {name} ({workers}): {len(differ)} of {len(head) + len(cls)} '
                         f'numbers differ, only in {"/".join(kinds)}; largest {top} '
                         f'{differ[top]:+.3g}')
    print(f'median of {args.reps} runs after one warm-up; speed-up = panopticapi seconds / '
          f'backend seconds; differences are fractions, vs panopticapi ({runs[0][1]})')
    print(f'all backends agree with panopticapi to {worst:.3g} '
          f'({"identical" if worst == 0 else "not bit-identical"})')
    for note in notes:
        print(note)
    if hotcoco is not None:
        print(f'hotcoco {hotcoco.__version__}, rayon threads: RAYON_NUM_THREADS='
              f'{os.environ["RAYON_NUM_THREADS"]}')
    if tmp is not None:
        tmp.cleanup()


if __name__ == '__main__':
    main()
