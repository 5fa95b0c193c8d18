"""Does adding the memory to a trained Mask2Former help? (tiny models, CPU)

The tiny Mask2Former is trained once (``--base-iters``, seed 0, README command 1's
schedule). From that checkpoint both arms continue for the same ``--iters`` iterations with
the same seeds: (a) as Mask2Former, (b) as MAPS with the stand-in memory
(``configs/maps/maps_r18_synthetic-panoptic_standin-clip_from-mask2former.py``: memory layers
start as an identity; every Mask2Former tensor at the fine-tune lr, the memory attention at
10x). Arm (a) uses the fine-tune config's lr for all its tensors, so the arms differ only by
the memory. The MAPS arm is also tested with its memory off (Table 7 style). Step 0 of (b)
(the checkpoint loaded into MAPS, not trained) must score exactly what the checkpoint scores.

Reported: per seed, and the mean paired difference (b) - (a) with its 95 % t-interval over
the seeds. Runs ``--jobs`` trainings at a time with one thread each.

    python benchmarks/maps_from_mask2former.py --publish          # seeds 0-4
    python benchmarks/maps_from_mask2former.py --seeds 0 --iters 20 --base-iters 20  # smoke
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import json
import os.path as osp
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.runs import (ROOT, interval95, last_checkpoint, publish, run, schedule,
                            summary)

BASELINE = 'configs/mask2former/mask2former_r18_synthetic-panoptic.py'
MAPS = 'configs/maps/maps_r18_synthetic-panoptic_standin-clip_from-mask2former.py'
MEMORY_OFF = ('model.panoptic_head.use_scene_memory=False',
              'model.panoptic_head.use_object_memory=False')
COLUMNS = ('PQ', 'PQ_th', 'PQ_st', 'AP', 'mIoU')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    parser.add_argument('--base-iters', type=int, default=1200,
                        help='iterations of the Mask2Former both arms start from')
    parser.add_argument('--iters', type=int, default=400, help='iterations of each arm')
    parser.add_argument('--jobs', type=int, default=2)
    parser.add_argument('--work-dir', default='work_dirs/maps_from_mask2former')
    parser.add_argument('--data-root', default='data/synthetic')
    parser.add_argument('--publish', action='store_true',
                        help='write benchmarks/results/maps_from_mask2former.{json,md}')
    return parser.parse_args(argv)


def train_and_test(args, name, config, options, tests, seed):
    """Train (unless the same run finished before) and run each test whose metrics are
    missing; {test: summary}."""
    work = osp.join(args.work_dir, f'{name}_seed{seed}')
    options = list(options) + [f'randomness.seed={seed}']
    stamp_file = osp.join(work, 'run.json')
    stamp = dict(config=config, options=options)
    done = False
    if osp.isfile(stamp_file):  # a finished training with the same command is reused
        with open(stamp_file) as f:
            done = json.load(f).get('stamp') == stamp
    if not done:
        start = time.time()
        run([sys.executable, 'tools/train.py', config, '--work-dir', osp.join(work, 'train'),
             '--cfg-options', *options], osp.join(work, 'train.log'), threads=1)
        with open(stamp_file, 'w') as f:
            json.dump(dict(stamp=stamp, seconds=time.time() - start), f)
    for test, extra in tests.items():
        if done and osp.isfile(osp.join(work, test, 'metrics.json')):
            continue
        run([sys.executable, 'tools/test.py', config, last_checkpoint(work), '--work-dir',
             osp.join(work, test)] + (['--cfg-options', *extra] if extra else []),
            osp.join(work, f'{test}.log'), threads=1)
    result = {test: summary(osp.join(work, test, 'metrics.json')) for test in tests}
    print(f'  {name} seed {seed}: PQ {result["test"]["PQ"]:.2f}', flush=True)
    return name, seed, result


def main(argv=None):
    args = parse_args(argv)
    from mmengine.config import Config
    if osp.abspath(args.data_root) != osp.join(ROOT, 'data', 'synthetic'):
        os.environ['MMMAPS_SYNTHETIC_ROOT'] = osp.join(osp.abspath(args.data_root), '')
    start = time.time()
    py = sys.executable
    print('==> data, stand-in encoder (cached) and its memory', flush=True)
    run([py, 'tools/dataset_converters/make_synthetic_panoptic.py', '--out', args.data_root,
         '--num-train', '400', '--num-val', '100', '--seed', '0', '--size', '128', '128'],
        osp.join(args.work_dir, 'data.log'))
    run([py, 'tools/pretrain_encoder.py'], osp.join(args.work_dir, 'pretrain.log'))
    run([py, 'tools/build_memory.py', MAPS], osp.join(args.work_dir, 'memory.log'))

    print(f'==> the Mask2Former both arms start from ({args.base_iters} iterations)', flush=True)
    _, _, base = train_and_test(args, 'base', BASELINE, schedule(args.base_iters),
                                {'test': ()}, 0)
    checkpoint = osp.abspath(last_checkpoint(osp.join(args.work_dir, 'base_seed0')))
    step0_dir = osp.join(args.work_dir, 'maps_step0')
    run([py, 'tools/test.py', MAPS, checkpoint, '--work-dir', step0_dir],
        osp.join(args.work_dir, 'maps_step0.log'), threads=1)
    step0 = summary(osp.join(step0_dir, 'metrics.json'))
    if step0 != base['test']:
        raise RuntimeError(f'MAPS at step 0 scores {step0}, the Mask2Former checkpoint '
                           f'{base["test"]}: the memory layers are not an identity')
    print(f'  MAPS at step 0 = the checkpoint: PQ {step0["PQ"]:.2f}', flush=True)

    lr = Config.fromfile(MAPS).optim_wrapper.optimizer.lr  # the fine-tune lr, one owner
    common = [f'load_from={checkpoint}'] + schedule(args.iters)
    jobs = []
    for seed in args.seeds:
        jobs.append(('Mask2Former', BASELINE, common + [f'optim_wrapper.optimizer.lr={lr}'],
                     {'test': ()}, seed))
        jobs.append(('MAPS', MAPS, common, {'test': (), 'test_memory_off': MEMORY_OFF}, seed))
    print(f'==> {len(jobs)} continuations of {args.iters} iterations, {args.jobs} at a time',
          flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        records = list(pool.map(lambda job: train_and_test(args, *job), jobs))
    runs = {(name, seed): result for name, seed, result in records}
    rows, diffs = [], {c: [] for c in COLUMNS}
    for seed in args.seeds:
        a, b = runs[('Mask2Former', seed)]['test'], runs[('MAPS', seed)]
        rows.append(dict(seed=seed, mask2former=a, maps=b['test'],
                         maps_memory_off=b['test_memory_off']))
        for c in COLUMNS:
            diffs[c].append(b['test'][c] - a[c])
    paired = {c: dict(zip(('mean', 'half_width_95'), interval95(v)), values=v)
              for c, v in diffs.items()}
    seconds = time.time() - start
    text = format_markdown(args, base['test'], rows, paired, seconds)
    print('\n' + text)
    payload = dict(params=vars(args), checkpoint=base['test'], step0=step0, runs=rows,
                   paired_difference=paired, wall_seconds=seconds)
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(payload, f, indent=2)
    if args.publish:
        publish('maps_from_mask2former', payload, text)
    return 0


def format_markdown(args, base, rows, paired, seconds):
    def cells(values):
        return ' | '.join(f'{values[c]:.2f}' for c in COLUMNS)

    lines = [f'Tiny R18 Mask2Former trained {args.base_iters} iterations (seed 0), then '
             f'{args.iters} more iterations as Mask2Former (a) or as MAPS with the stand-in '
             f'memory (b), seeds {" ".join(map(str, args.seeds))}; synthetic val (100 images).',
             '', f'The checkpoint: {cells(base)} ({" / ".join(COLUMNS)}); MAPS at step 0 '
             'scores exactly the same.', '',
             '| seed | arm | ' + ' | '.join(COLUMNS) + ' |', '|---|---|' + '---|' * len(COLUMNS)]
    for row in rows:
        lines.append(f'| {row["seed"]} | (a) Mask2Former | {cells(row["mask2former"])} |')
        lines.append(f'| {row["seed"]} | (b) MAPS | {cells(row["maps"])} |')
        lines.append(f'| {row["seed"]} | (b) memory off | {cells(row["maps_memory_off"])} |')
    lines += ['', '| paired (b) - (a), n = %d | ' % len(rows) + ' | '.join(COLUMNS) + ' |',
              '|---|' + '---|' * len(COLUMNS),
              '| mean ± 95 % half-width | ' + ' | '.join(
                  f'{paired[c]["mean"]:+.2f} ± {paired[c]["half_width_95"]:.2f}'
                  for c in COLUMNS) + ' |',
              '', f'Wall time {seconds / 60:.0f} min with {args.jobs} jobs on '
              f'{os.cpu_count()} cores.']
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
