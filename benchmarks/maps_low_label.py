"""Low-label benchmark: does retrieval from a pretrained encoder's memory help MAPS?

Mask2Former and MAPS (memory built by the self-supervised stand-in for CLIP,
``tools/pretrain_encoder.py``) are trained with the same schedule on small labelled subsets of
the synthetic train split (the first N images: the generator draws images independently, so
the first N are a random sample), several seeds each, and tested on the 100 val images. MAPS
is also tested with both memories switched off in the forward pass (Table 7 style), so a gain
can be attributed to what the memory holds rather than to MAPS' extra parameters.

The memory of a subset indexes only that subset (scene and object banks need no more than
the labelled images; the object bank needs their ground truth).

    python benchmarks/maps_low_label.py                       # 50 and 200 images, seeds 0-2
    python benchmarks/maps_low_label.py --subsets 50 --seeds 0 --iters 100   # smoke run

Runs ``--jobs`` trainings at a time, each with one thread (two processes with torch's default
threads on 2 cores slow each other down by an order of magnitude). Writes
``WORK_DIR/results.json`` and, with ``--publish``, ``benchmarks/results/maps_low_label.{json,md}``.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import json
import os
import os.path as osp
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.runs import ROOT, publish, run, schedule, summary, write_subset


BASELINE = 'configs/mask2former/mask2former_r18_synthetic-panoptic.py'
MAPS = 'configs/maps/maps_r18_synthetic-panoptic_standin-clip.py'
MEMORY_OFF = ('model.panoptic_head.use_scene_memory=False',
              'model.panoptic_head.use_object_memory=False')
COLUMNS = ('PQ', 'PQ_th', 'PQ_st', 'AP')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--subsets', type=int, nargs='+', default=[50, 200],
                        help='labelled training images')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--iters', type=int, default=500, help='iterations (batch 4)')
    parser.add_argument('--jobs', type=int, default=2, help='trainings run at once')
    parser.add_argument('--work-dir', default='work_dirs/maps_low_label')
    parser.add_argument('--data-root', default='data/synthetic',
                        help='the labelled synthetic dataset (generated when missing; the '
                        'configs read it through MMMAPS_SYNTHETIC_ROOT)')
    parser.add_argument('--maps-config', default=MAPS)
    parser.add_argument('--baseline-config', default=BASELINE)
    parser.add_argument('--publish', action='store_true',
                        help='write benchmarks/results/maps_low_label.{json,md}')
    return parser.parse_args(argv)


def train_and_test(args, name, config, subset_ann, memory_root, seed, num):
    work = osp.join(args.work_dir, f'n{num}', f'{name}_seed{seed}')
    data_opts = [f'train_dataloader.dataset.ann_file={osp.abspath(subset_ann)}',
                 f'randomness.seed={seed}']
    if memory_root:
        data_opts.append(f'memory.root={osp.abspath(memory_root)}')
    result = {}
    # a finished run with the same command is reused (a rerun after an interruption)
    stamp_file, stamp = osp.join(work, 'run.json'), dict(
        config=config, options=schedule(args.iters) + data_opts)
    done = False
    if osp.isfile(stamp_file):
        with open(stamp_file) as f:
            done = json.load(f).get('stamp') == stamp
    start = time.time()
    if not done:
        run([sys.executable, 'tools/train.py', config, '--work-dir', osp.join(work, 'train'),
             '--cfg-options', *schedule(args.iters), *data_opts],
            osp.join(work, 'train.log'), threads=1)
        with open(stamp_file, 'w') as f:
            json.dump(dict(stamp=stamp, train_seconds=time.time() - start), f)
    with open(stamp_file) as f:
        train_seconds = json.load(f)['train_seconds']
    with open(osp.join(work, 'train', 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    tests = {name: ()}
    if memory_root:
        tests[name + ' memory off'] = MEMORY_OFF
    for row, extra in tests.items():
        test_dir = osp.join(work, 'test' + ('_memory_off' if extra else ''))
        if done and osp.isfile(osp.join(test_dir, 'metrics.json')):
            result[row] = summary(osp.join(test_dir, 'metrics.json'))
            continue
        run([sys.executable, 'tools/test.py', config, ckpt, '--work-dir', test_dir,
             '--cfg-options', *data_opts[1:], *extra],
            osp.join(work, osp.basename(test_dir) + '.log'), threads=1)
        result[row] = summary(osp.join(test_dir, 'metrics.json'))
    print(f'  done n={num} {name} seed {seed}: PQ {result[name]["PQ"]:.1f} '
          f'({train_seconds:.0f} s training)', flush=True)
    return num, seed, result, train_seconds


def aggregate(records):
    """{num: {row: {column: (mean, std, values)}}} over seeds."""
    table = {}
    for num, seed, result, _ in records:
        for row, values in result.items():
            cell = table.setdefault(num, {}).setdefault(row, {})
            for column in COLUMNS:
                cell.setdefault(column, []).append(values[column])
    out = {}
    for num, rows in table.items():
        for row, columns in rows.items():
            out.setdefault(num, {})[row] = {
                c: dict(mean=statistics.mean(v), std=statistics.stdev(v) if len(v) > 1 else 0.0,
                        values=v) for c, v in columns.items()}
    return out


def format_markdown(agg, args, seconds):
    lines = [f'Synthetic val (100 images); tiny R18 models, {args.iters} iterations at batch 4, '
             f'seeds {" ".join(map(str, args.seeds))}; mean ± std over seeds.', '',
             '| labelled images | model | ' + ' | '.join(COLUMNS) + ' |',
             '|---|---|' + '---|' * len(COLUMNS)]
    for num in sorted(agg):
        for row, columns in agg[num].items():
            cells = [f'{columns[c]["mean"]:.1f} ± {columns[c]["std"]:.1f}' for c in COLUMNS]
            lines.append(f'| {num} | {row} | ' + ' | '.join(cells) + ' |')
    lines += ['', f'Wall time {seconds / 60:.0f} min with {args.jobs} jobs on '
              f'{os.cpu_count()} cores.']
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if osp.abspath(args.data_root) != osp.join(ROOT, 'data', 'synthetic'):
        os.environ['MMMAPS_SYNTHETIC_ROOT'] = osp.join(osp.abspath(args.data_root), '')
    start = time.time()
    py = sys.executable
    print('==> labelled data and the stand-in encoder (cached)', flush=True)
    run([py, 'tools/dataset_converters/make_synthetic_panoptic.py', '--out', args.data_root,
         '--num-train', '400', '--num-val', '100', '--seed', '0', '--size', '128', '128'],
        osp.join(args.work_dir, 'data.log'))
    run([py, 'tools/pretrain_encoder.py'], osp.join(args.work_dir, 'pretrain.log'))

    jobs = []
    for num in args.subsets:
        ann = osp.join(args.work_dir, 'annotations', f'panoptic_train_first{num}.json')
        write_subset(osp.join(args.data_root, 'annotations', 'panoptic_train.json'), ann, num)
        memory_root = osp.join(args.work_dir, 'memory', f'first{num}')
        print(f'==> memory of the first {num} training images: {memory_root}', flush=True)
        run([py, 'tools/build_memory.py', args.maps_config, '--out', memory_root,
             '--cfg-options', f'train_dataloader.dataset.ann_file={osp.abspath(ann)}',
             f'memory.root={osp.abspath(memory_root)}'],
            osp.join(args.work_dir, f'memory_first{num}.log'))
        for seed in args.seeds:
            jobs.append(('Mask2Former', args.baseline_config, ann, None, seed, num))
            jobs.append(('MAPS', args.maps_config, ann, memory_root, seed, num))
    print(f'==> {len(jobs)} trainings, {args.jobs} at a time', flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        records = list(pool.map(lambda job: train_and_test(args, *job), jobs))
    seconds = time.time() - start
    agg = aggregate(records)
    text = format_markdown(agg, args, seconds)
    print('\n' + text)
    payload = dict(params=vars(args), results={str(k): v for k, v in agg.items()},
                   runs=[dict(num=n, seed=s, result=r, train_seconds=t)
                         for n, s, r, t in records], wall_seconds=seconds)
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(payload, f, indent=2)
    if args.publish:
        publish('maps_low_label', payload, text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
