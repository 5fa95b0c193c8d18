"""Does MAPS's memory add knowledge? An experiment that can tell "adds knowledge" from "no
headroom" from "broken" (issue 25), on the bundled synthetic set (tiny R18 models, CPU).

Designed before it was run. Phases (each reusable through run stamps, so the experiment can
be run in parts; ``--jobs`` trainings at a time, one thread each):

0. ``precheck`` (a data variant, before its regime): the key encoder's scene P@5 on the
   variant's training images (all scene types; the look-alike scenes querying only each
   other) and Mask2Former's look-alike flip rate at ``--size`` labels per seed. A variant
   whose look-alike scenes the encoder cannot tell apart, or whose twins Mask2Former does
   not confuse, has no headroom to offer the memory and is redesigned, not run.
1. ``plateau``: Mask2Former on all 400 labelled images, one seed, validated every
   ``--val-every`` iterations up to ``--plateau-iters``: the schedule at which 400 labels has
   plateaued (PQ within ~1 point of its best over the last two validations).
2. ``curve``: Mask2Former at that schedule (``--iters``) on ``--sizes`` labelled images
   (each seed draws its own labelled subset; every arm of a seed uses it). The regime is the
   smallest size whose PQ_th is clearly below the 400-label model's without collapsing.
3. ``arms`` at that size (``--size``), >= 8 seeds, same schedule, same subsets:
   Mask2Former; MAPS attending to learned tokens instead of retrievals (the capacity
   control); MAPS with a shuffled memory (each image gets another image's retrieval, in
   training and test); MAPS; the oracle (the scene memory holds one fixed vector per true
   scene type: the headroom). Named with ``--arms``: the robustness variants
   (``maps_wrong50``, its milder dose ``maps_wrong20``, ``maps_whole_masking``) and
   ``aug_cls_shuffled`` (MAPS-Aug-CLS's token of the input's own embedding next to a
   shuffled memory: the embedding without the items).
4. ``counterfactual``: each trained retrieving MAPS arm (``--arms``, default ``maps``)
   tested with its own memory, memory off, a shuffled memory and the memory of each single
   scene type (robustness to a wrong memory, below); how often look-alike predictions flip
   to their twin class.

Statistic: paired differences (arm - Mask2Former) over the seeds with a 95 % t-interval, on
PQ_th and on the look-alike confusion rate.

The arms and counterfactual phases record each finished run in a committed ledger
(``benchmarks/results/<results name>_runs.json``; ``RunLedger``) with a description of the
run made before it starts (``run_description``: config, options, digests of its inputs,
versions) and the commit it ran with, and takes a run from there instead of training it only
when the description is equal: seeds accumulate over sessions whose machines keep no work
dirs. A code change that changes results deletes the ledgers it affects.

Reading, written down before running:

- oracle ~ Mask2Former (interval covers 0): no headroom on this data at this size;
  nothing can be concluded about MAPS here; design a data variant with headroom first.
- oracle > Mask2Former but MAPS ~ shuffled: the memory carries the information (oracle) but
  MAPS does not use what retrieval brings: an implementation problem to chase.
- MAPS > shuffled and MAPS > learned tokens (both intervals above 0): the premise holds here.
- MAPS ~ learned tokens > Mask2Former: the gain is capacity, not memory.

The counterfactual rows also measure robustness to a wrong memory (goal: MAPS with a wrong
memory is no worse than MAPS with its memory off): each trained MAPS is tested with its own
memory, with its memory off, with a shuffled assignment (every image gets another training
image's retrieval: ``memory.retrieval.wrong_memory_prob=1`` at test) and with the memory of
each single scene type (built from that scene type's labelled images); per row PQ, PQ_th,
the PQ of the classes that occur in val but in no image of the memory, and the look-alike
flip rate (of the ground-truth pixels of a look-alike class predicted as it or its twin, the
fraction predicted as the twin). Statistic: per arm, paired differences (test - memory off)
over the seeds with a 95 % t-interval, for each wrong memory and for the single-scene
memories together (each seed's mean), the PQ of the absent classes paired with memory off's
PQ on the same classes; and the robustness variants' cost on the normal row (arm - plain
MAPS, both with their own memory). Reading, written down before running: a wrong memory's
Delta PQ interval entirely below 0 means that arm is worse with a wrong memory than without
one (the goal is not met); an interval covering 0 or above it means not shown worse, at the
resolution of its half-width; Delta PQ absent below 0 is the copying (classes the memory
lacks lose what plain pixel evidence gives them).

    python benchmarks/maps_evidence.py precheck --data-variant V --iters N --size S [--seeds]
    python benchmarks/maps_evidence.py plateau
    python benchmarks/maps_evidence.py curve --iters N
    python benchmarks/maps_evidence.py arms --iters N --size S --seeds 0 1 2 3 4 5 6 7
    python benchmarks/maps_evidence.py counterfactual --iters N --size S --seeds 0 1 ...
        [--arms maps maps_wrong50 maps_whole_masking] [--results-tag seeds0-5] [--publish]
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import json
import os.path as osp
import re
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional

from mmmaps.datasets.synthetic_panoptic import SCENE_VARIANTS
from benchmarks.runs import (ROOT, RunLedger, directory_digest, interval95, portable,
                             publish, run, schedule, stamped_test, stamped_training,
                             validation_curve, write_images, write_subset)

MASK2FORMER = 'configs/mask2former/mask2former_r18_synthetic-panoptic.py'
MAPS = 'configs/maps/maps_r18_synthetic-panoptic_standin-clip.py'
FULL_SIZE = 400
PLATEAU_PQ = 1.0  # PQ points: within this of the best validation counts as plateaued
# the regime: the smallest labelled-set size whose mean PQ_th is at least REGIME_GAP below
# the 400-label model's and at least REGIME_FLOOR of it (clearly label-limited, not collapsed)
REGIME_GAP, REGIME_FLOOR = 5.0, 0.5
MEMORY_OFF = ('model.panoptic_head.use_scene_memory=False',
              'model.panoptic_head.use_object_memory=False')
# the counterfactual's tests: the reference and the columns compared with it
OWN_MEMORY, MEMORY_OFF_TEST = 'own memory', 'memory off'
ROBUSTNESS_COLUMNS = ('PQ', 'PQ_th', 'PQ_absent', 'look_alike_flips')
SCENE_MEMORIES = 'mean of the single-scene memories'
# the scene types whose look-alikes a data variant's scene alone tells apart
LOOK_ALIKE_SCENES = ('meadow', 'lake')
SHUFFLED = ('memory.retrieval.wrong_memory_prob=1.0', 'memory.retrieval.wrong_memory_at_test=True')
# MAPS arms: the training options over the MAPS config
MAPS_ARMS = {
    'maps': (),  # the paper's plain MAPS
    'maps_shuffled': SHUFFLED,  # each image another image's retrieval, training and test
    # the input's own embedding without its memory: MAPS-Aug-CLS's scene token (the key
    # encoder's embedding of the input) next to another image's retrieval, training and test
    'aug_cls_shuffled': SHUFFLED + ('model.panoptic_head.aug_cls=True',),
    'maps_wrong50': ('memory.retrieval.wrong_memory_prob=0.5',),  # robustness training
    'maps_wrong20': ('memory.retrieval.wrong_memory_prob=0.2',),  # its milder dose
    'maps_whole_masking': ('model.panoptic_head.input_masking=0.5',
                           "model.panoptic_head.input_masking_mode='memory'"),
    # the capacity control: the same memory layers attending to learned tokens (k scene
    # tokens, max_objects object tokens of the tiny configs), no retrieval
    'learned_tokens': ('model.panoptic_head.learned_memory=(5,40)',),
    # the headroom: plain MAPS reading the oracle memory (oracle_memory) instead of its own
    'oracle': (),
}
# the arms that read their memory's retrieval (not learned tokens, not the oracle's vectors)
RETRIEVING_ARMS = tuple(arm for arm in MAPS_ARMS if arm not in ('learned_tokens', 'oracle'))
# the arms phase's default: the controls and the headroom next to MAPS (the robustness
# variants maps_wrong50 / maps_wrong20 / maps_whole_masking and aug_cls_shuffled run when
# named with --arms)
CORE_ARMS = ('learned_tokens', 'maps_shuffled', 'maps', 'oracle')
# an arm that adds one thing to an arm other than maps is also paired with that arm
ADDS_ONE_THING_TO = {'aug_cls_shuffled': 'maps_shuffled'}  # + the input's own embedding


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('phase', choices=['precheck', 'plateau', 'curve', 'arms',
                                          'counterfactual'])
    parser.add_argument('--plateau-iters', type=int, default=3000)
    parser.add_argument('--val-every', type=int, default=500)
    parser.add_argument('--iters', type=int, help='the schedule (from the plateau phase)')
    parser.add_argument('--sizes', type=int, nargs='+', default=[10, 20, 50, 400])
    parser.add_argument('--size', type=int, help='the labelled-set size of the arms')
    parser.add_argument('--arms', nargs='+', choices=sorted(MAPS_ARMS),
                        help='the MAPS arms to train and test (arms: '
                        f'{" ".join(CORE_ARMS)}; counterfactual: maps; Mask2Former is always '
                        'the reference of the arms phase)')
    parser.add_argument('--maps-config', default=MAPS,
                        help='the MAPS config of every MAPS arm (another than the default '
                        'gets its own work dir and published names)')
    parser.add_argument('--seeds', type=int, nargs='*', default=[0, 1, 2],
                        help='none: precheck measures the key encoder only')
    parser.add_argument('--jobs', type=int, default=2, help='trainings run at once')
    parser.add_argument('--data-variant', default='bundled', choices=sorted(SCENE_VARIANTS),
                        help='the synthetic data drawn (make_synthetic_panoptic.py --variant); '
                        "another than 'bundled' gets its own data root, work dir and "
                        'published names')
    parser.add_argument('--work-dir', help='default work_dirs/maps_evidence[_VARIANT]')
    parser.add_argument('--data-root', help='default data/synthetic[_VARIANT]')
    parser.add_argument('--publish', action='store_true',
                        help='write benchmarks/results/maps_evidence[_VARIANT]_PHASE[_TAG]'
                        '.{json,md}')
    parser.add_argument('--results-tag',
                        help='appended to the published name, for a run over other arms or '
                        'seeds than the main one of its phase (e.g. seeds0-5)')
    args = parser.parse_args(argv)
    if args.results_tag is not None and not re.fullmatch(r'[A-Za-z0-9.-]+', args.results_tag):
        parser.error(f'--results-tag {args.results_tag!r}: letters, digits, "." and "-" only '
                     '(it becomes part of a file name)')
    if not args.seeds and args.phase != 'precheck':
        parser.error(f'{args.phase} needs --seeds')
    suffix = '' if args.data_variant == 'bundled' else f'_{args.data_variant}'
    args.data_root = args.data_root or f'data/synthetic{suffix}'
    # the variant's labelled subsets and Mask2Former's runs (plateau, curve, the arms'
    # reference) do not depend on the MAPS config: every MAPS config of a variant is paired
    # with the same ones
    args.variant_dir = args.work_dir or f'work_dirs/maps_evidence{suffix}'
    args.variant_results_name = f'maps_evidence{suffix}'
    # another MAPS config: its own runs (the arms' stamps would retrain over each other) and
    # published names
    if osp.normpath(args.maps_config) != osp.normpath(MAPS):
        suffix += '_' + osp.splitext(osp.basename(args.maps_config))[0]
    args.work_dir = args.work_dir or f'work_dirs/maps_evidence{suffix}'
    args.results_name = f'maps_evidence{suffix}'
    return args


def published_name(args) -> str:
    """The file name (no extension) under benchmarks/results/ of a --publish run."""
    tag = f'_{args.results_tag}' if args.results_tag else ''
    return f'{args.results_name}_{args.phase}{tag}'


def prepare(args):
    if osp.abspath(args.data_root) != osp.join(ROOT, 'data', 'synthetic'):
        os.environ['MMMAPS_SYNTHETIC_ROOT'] = osp.join(osp.abspath(args.data_root), '')
    run([sys.executable, 'tools/dataset_converters/make_synthetic_panoptic.py', '--out',
         args.data_root, '--num-train', str(FULL_SIZE), '--num-val', '100', '--seed', '0',
         '--size', '128', '128', '--variant', args.data_variant],
        osp.join(args.work_dir, 'data.log'))


def labelled_subset(args, size, seed):
    """The annotation file of seed ``seed``'s ``size`` labelled images (all at 400)."""
    src = osp.join(args.data_root, 'annotations', 'panoptic_train.json')
    if size == FULL_SIZE:
        return osp.abspath(src)
    dst = osp.join(args.variant_dir, 'annotations', f'panoptic_train_n{size}_seed{seed}.json')
    write_subset(src, dst, size, seed=seed)
    return osp.abspath(dst)


def precheck(args):
    """A data variant's pre-checks, before its regime is measured: can the memory's key
    encoder tell the look-alike scenes apart (scene P@5 of the variant's training images,
    all scene types, and the look-alike scenes querying only each other), and does
    Mask2Former at ``--size`` labelled images and ``--iters`` iterations confuse the twins
    (look-alike flip rate per seed)?"""
    from mmengine.config import Config
    from mmmaps.memory.encoders.self_supervised import (encode_image_files, load_scene_labels,
                                                        scene_retrieval_quality)
    if args.seeds and not (args.iters and args.size):
        raise SystemExit('maps_evidence.py precheck: give --iters and --size (or no --seeds)')
    ann = osp.join(args.data_root, 'annotations', 'panoptic_train.json')
    files, scenes = load_scene_labels(ann, osp.join(args.data_root, 'train'))
    keys = encode_image_files(Config.fromfile(args.maps_config).memory.key_encoder, files)
    twins = [i for i, s in enumerate(scenes) if s in LOOK_ALIKE_SCENES]
    retrieval = {
        'all scene types': scene_retrieval_quality(keys, scenes, k=5),
        ' / '.join(LOOK_ALIKE_SCENES) + ' only': scene_retrieval_quality(
            keys[twins], [scenes[i] for i in twins], k=5)}

    def one(seed):
        work, config, options = arm_run(args, 'mask2former', seed,
                                        labelled_subset(args, args.size, seed), None)
        return seed, evaluate(args, work, config, 'test', options)

    with ThreadPoolExecutor(args.jobs) as pool:
        flips = dict(pool.map(one, args.seeds))
    lines = [f'Pre-checks of the data in {args.data_root} ({args.data_variant}): the key encoder '
             f'of {osp.basename(args.maps_config)} on the {len(files)} training images, each '
             'querying the others:', '',
             '| images | scene P@5 | chance | mAP |', '|---|---|---|---|']
    for name, q in retrieval.items():
        lines.append(f'| {name} | {q["precision_at_k"]:.3f} | {q["chance"]:.3f} | '
                     f'{q["mean_average_precision"]:.3f} |')
    lines += ['', f'Mask2Former, {args.iters} iterations on {args.size} labelled images:'
              if flips else 'Mask2Former: not run (no --seeds).', '']
    if flips:
        lines += ['| seed | PQ | PQ_th | look-alike flips |', '|---|---|---|---|']
    for seed, r in flips.items():
        lines.append(f'| {seed} | {r["PQ"]:.1f} | {r["PQ_th"]:.1f} | '
                     f'{r["look_alike_flips"]:.1f} % |')
    if len(flips) > 1:
        mean = statistics.mean(r['look_alike_flips'] for r in flips.values())
        lines.append(f'| mean | | | {mean:.1f} % |')
    return dict(retrieval=retrieval, mask2former={str(s): r for s, r in flips.items()}), \
        '\n'.join(lines)


def plateau(args):
    work = osp.join(args.variant_dir, 'plateau', f'mask2former_n{FULL_SIZE}_seed0')
    options = schedule(args.plateau_iters, args.val_every) + ['randomness.seed=0']
    seconds = stamped_training(work, MASK2FORMER, options)
    curve = validation_curve(osp.join(work, 'train'))
    lines = [f'Mask2Former (tiny R18), all {FULL_SIZE} labelled images, seed 0, validated '
             f'every {args.val_every} iterations (batch 4; lr step at 85 % of '
             f'{args.plateau_iters}); synthetic val (100 images). Training {seconds / 60:.0f} '
             'min on one thread.', '', '| iteration | PQ | PQ_th | PQ_st | AP | mIoU |',
             '|---|---|---|---|---|---|']
    for step, s in sorted(curve.items()):
        lines.append(f'| {step} | ' + ' | '.join(
            '-' if s[c] is None else f'{s[c]:.1f}' for c in
            ('PQ', 'PQ_th', 'PQ_st', 'AP', 'mIoU')) + ' |')
    iters = plateau_schedule({k: v['PQ'] for k, v in curve.items()},
                             args.plateau_iters * 85 // 100)
    lines += ['', f'Schedule (the first validation before the lr step within {PLATEAU_PQ} PQ '
              f'of the best before it): **{iters} iterations**.']
    return (dict(curve={str(k): v for k, v in curve.items()}, seconds=seconds,
                 schedule=iters), '\n'.join(lines))


def plateau_schedule(pq: Dict[int, float], lr_step: int) -> int:
    """The schedule of the other phases, from the plateau run's {iteration: PQ}: the first
    validation before the lr step whose PQ is within :data:`PLATEAU_PQ` of the best PQ
    before the step (the step itself adds the same late gain to any schedule, since each
    run steps at 85 % of its own length)."""
    before = {step: value for step, value in pq.items() if step <= lr_step}
    if len(before) < 2:
        raise ValueError(f'{len(before)} validations before the lr step at {lr_step}: need '
                         'two or more to see a plateau (lower --val-every)')
    best = max(before.values())
    return min(step for step, value in before.items() if value >= best - PLATEAU_PQ)


def curve(args):
    if not args.iters:
        raise SystemExit('maps_evidence.py curve: give --iters (the plateau phase\'s schedule)')
    jobs = [(size, seed) for size in args.sizes for seed in args.seeds]

    def one(job):
        size, seed = job
        work = osp.join(args.variant_dir, f'iters{args.iters}',
                        f'mask2former_n{size}_seed{seed}')
        ann = labelled_subset(args, size, seed)
        options = schedule(args.iters) + [f'randomness.seed={seed}',
                                          f'train_dataloader.dataset.ann_file={ann}']
        stamped_training(work, MASK2FORMER, options)
        result = stamped_test(work, 'test', MASK2FORMER, [])
        print(f'  n={size} seed {seed}: PQ {result["PQ"]:.1f} PQ_th {result["PQ_th"]:.1f}',
              flush=True)
        return size, seed, result

    with ThreadPoolExecutor(args.jobs) as pool:
        records = list(pool.map(one, jobs))
    columns = ('PQ', 'PQ_th', 'PQ_st', 'AP')
    lines = [f'Mask2Former (tiny R18), {args.iters} iterations at batch 4, per labelled-set '
             f'size and seed (each seed its own random subset); synthetic val (100 images).',
             '', '| labelled | seed | ' + ' | '.join(columns) + ' |',
             '|---|---|' + '---|' * len(columns)]
    for size, seed, s in records:
        lines.append(f'| {size} | {seed} | ' + ' | '.join(f'{s[c]:.1f}' for c in columns) + ' |')
    means = {size: statistics.mean(r['PQ_th'] for z, _, r in records if z == size)
             for size in args.sizes}
    lines += ['', '| labelled | mean PQ_th | seeds |', '|---|---|---|']
    lines += [f'| {size} | {m:.1f} | {sum(z == size for z, _, _ in records)} |'
              for size, m in sorted(means.items())]
    size = regime_size(means)
    lines += ['', f'Regime (the smallest size with mean PQ_th at least {REGIME_GAP:g} below '
              f'the {FULL_SIZE}-label model\'s and at least {REGIME_FLOOR:.0%} of it): '
              + (f'**{size} labelled images**.' if size else '**none** of these sizes.')]
    return (dict(runs=[dict(size=a, seed=b, result=c) for a, b, c in records],
                 mean_pq_th={str(k): v for k, v in means.items()}, regime_size=size),
            '\n'.join(lines))


def regime_size(mean_pq_th: Dict[int, float]) -> Optional[int]:
    """The arms' labelled-set size from the curve's {size: mean PQ_th} (None: no size is
    both clearly below the full set and not collapsed)."""
    if FULL_SIZE not in mean_pq_th:
        raise ValueError(f'the curve needs the {FULL_SIZE}-label model (--sizes ... '
                         f'{FULL_SIZE})')
    full = mean_pq_th[FULL_SIZE]
    fits = [size for size, value in mean_pq_th.items()
            if size < FULL_SIZE and full - value >= REGIME_GAP and value >= REGIME_FLOOR * full]
    return min(fits) if fits else None


def scene_subsets(args, ann):
    """{scene type: annotation file of the images of ``ann`` of that scene type}."""
    with open(ann) as f:
        data = json.load(f)
    out = {}
    for scene in sorted({im['scene'] for im in data['images']}):
        dst = osp.join(args.variant_dir, 'annotations',
                       osp.basename(ann).replace('.json', f'_{scene}.json'))
        write_images(data, [im for im in data['images'] if im['scene'] == scene], dst)
        out[scene] = dst
    return out


def categories_in(ann):
    with open(ann) as f:
        data = json.load(f)
    return {data_cat['name'] for data_cat in data['categories']
            if any(s['category_id'] == data_cat['id'] for a in data['annotations']
                   for s in a['segments_info'])}


def build_memory(args, ann, root):
    run([sys.executable, 'tools/build_memory.py', args.maps_config, '--out', root,
         '--cfg-options', f'train_dataloader.dataset.ann_file={osp.abspath(ann)}',
         f'memory.root={osp.abspath(root)}'], root + '.log', threads=1)
    return osp.abspath(root)


def look_alike_flips(prefix, gt_ann, gt_folder):
    """Of the ground-truth pixels of a look-alike class predicted as that class or its twin,
    the fraction predicted as the twin (``PREFIX.panoptic.json`` + PNGs vs the ground
    truth)."""
    import numpy as np
    from PIL import Image
    from mmmaps.datasets.synthetic_panoptic import LOOK_ALIKE_PAIRS

    with open(gt_ann) as f:
        names = {c['id']: c['name'] for c in json.load(f)['categories']}

    def label_maps(ann_file, folder):  # the predictions' JSON has no categories
        with open(ann_file) as f:
            data = json.load(f)
        for a in data['annotations']:
            png = np.asarray(Image.open(osp.join(folder, a['file_name'])).convert('RGB'),
                             dtype=np.int64)
            ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
            labels = np.full(ids.shape, '', dtype=object)
            for seg in a['segments_info']:
                labels[ids == seg['id']] = names[seg['category_id']]
            yield a['image_id'], labels

    twin = {a: b for a, b in LOOK_ALIKE_PAIRS} | {b: a for a, b in LOOK_ALIKE_PAIRS}
    gt = dict(label_maps(gt_ann, gt_folder))
    same = flipped = 0
    for image_id, pred in label_maps(prefix + '.panoptic.json', prefix + '.panoptic'):
        truth = gt[image_id]
        for cls, other in twin.items():
            where = truth == cls
            same += int((pred[where] == cls).sum())
            flipped += int((pred[where] == other).sum())
    return flipped / max(same + flipped, 1)


def oracle_memory(memory: str, ann: str, dst: str, seed: int = 0) -> str:
    """Write (once) at ``dst`` a copy of the memory ``memory`` whose scene values are one
    fixed vector per true scene type: the headroom arm's memory.

    The scene type of each entry is the generator's ``scene`` of its image in ``ann``. Keys,
    index, content identities, the object bank and the query cache are the memory's own, so
    retrieval is unchanged (the stand-in retrieves the query's scene type for 99.8 % of the
    val neighbours) and what it hands over is exactly the scene type. The vectors are random
    Gaussian directions (``seed``; scene types in sorted order; near-orthogonal at 192-d)
    scaled to the bank's mean value norm, so the memory's value projection sees values of
    the usual size. ``dst`` should name the source (a digest of its content) so that a
    different source gets a new oracle. Retrieval searches the labelled subset's memory: where
    a scene type has fewer than k other images there, some of the k retrieved are of another
    type, for MAPS and for the oracle alike."""
    import shutil

    import numpy as np
    from mmmaps.memory.bank import BankWriter, MemoryBank
    from mmmaps.memory.storage import atomic_directory

    if osp.isfile(osp.join(dst, 'manifest.json')):
        return osp.abspath(dst)
    with open(osp.join(memory, 'manifest.json')) as f:
        banks = json.load(f)['banks']
    scene = MemoryBank.load(osp.join(memory, banks['scene']))
    with open(ann) as f:
        scene_of = {im['id']: im.get('scene') for im in json.load(f)['images']}
    ids = [int(i) for i in scene.image_ids]
    unknown = [i for i in ids if scene_of.get(i) is None]
    if unknown:
        raise ValueError(f'{ann} gives no scene type for {len(unknown)} images of the memory '
                         f'{memory} (e.g. ids {unknown[:3]}); the oracle needs the generator\'s '
                         '"scene" of every image')
    types = sorted({scene_of[i] for i in ids})
    directions = np.random.default_rng(seed).standard_normal((len(types), scene.value_dim))
    norm = float(np.linalg.norm(np.asarray(scene.values, np.float64), axis=1).mean())
    vectors = {t: norm * d / np.linalg.norm(d) for t, d in zip(types, directions)}
    with atomic_directory(dst) as tmp:
        for name in os.listdir(memory):
            if name != banks['scene'] and not name.startswith('.'):
                copy = shutil.copytree if osp.isdir(osp.join(memory, name)) else shutil.copy2
                copy(osp.join(memory, name), osp.join(tmp, name))
        writer = BankWriter(osp.join(tmp, banks['scene']), 'scene', scene.key_dim,
                            scene.value_dim, scene.manifest['value_dtype'],
                            scene.manifest['index'], atomic=False)
        writer.add(np.asarray(scene.keys), np.stack([vectors[scene_of[i]] for i in ids]),
                   np.diff(scene.offsets), ids, np.asarray(scene.identities),
                   scene.file_names)
        writer.commit(dict(source=scene.manifest['source'],
                           key_encoder=scene.manifest['key_encoder'],
                           value_encoder=dict(type='SceneTypeOracle', scene_types=types,
                                              seed=seed, annotation=osp.abspath(ann),
                                              of=scene.manifest_sha256)))
    return osp.abspath(dst)


def seed_inputs(args, seed, oracle=False):
    """Seed ``seed``'s labelled annotation file, the memory of those images and (with
    ``oracle``) its oracle memory: written once per seed, before any of its trainings run
    (parallel arms of a seed share them)."""
    ann = labelled_subset(args, args.size, seed)
    memory = build_memory(args, ann, osp.join(args.work_dir, 'memory',
                                              f'n{args.size}_seed{seed}'))
    oracle_root = None
    if oracle:  # named by the source memory's content: a different memory, a new oracle;
        # the same memory rebuilt on another machine, the same name (the ledger's run
        # descriptions hold this path)
        oracle_root = oracle_memory(memory, ann, osp.join(
            args.work_dir, 'memory',
            f'n{args.size}_seed{seed}_oracle_{directory_digest(memory)[:12]}'))
    return ann, memory, oracle_root


def arm_plan(args, arm, seed, ann, memory, oracle=None):
    """Where and how arm ``arm`` of seed ``seed`` trains on ``ann`` (MAPS arms: with the
    memory ``memory``, the oracle arm with ``oracle``): (work dir, config, training options,
    test options)."""
    runs = args.variant_dir if arm == 'mask2former' else args.work_dir
    work = osp.join(runs, f'iters{args.iters}', f'{arm}_n{args.size}_seed{seed}')
    common = [f'randomness.seed={seed}']
    if arm == 'mask2former':
        config, arm_options = MASK2FORMER, []
    else:
        config, arm_options = args.maps_config, list(MAPS_ARMS[arm])
        if arm == 'oracle' and not oracle:
            raise ValueError('the oracle arm needs its oracle memory (seed_inputs(oracle=True))')
        common.append(f'memory.root={oracle if arm == "oracle" else memory}')
    train_options = schedule(args.iters) + common + arm_options + [
        f'train_dataloader.dataset.ann_file={ann}']
    # tests read the arm's options, the wrong memory only where the arm keeps it at test
    # (the shuffled controls; maps_wrong50's and maps_wrong20's are training-only robustness
    # augmentations)
    at_test = set(SHUFFLED) <= set(arm_options)
    test_options = common + [o for o in arm_options if at_test or 'wrong_memory_prob' not in o]
    return work, config, train_options, test_options


def arm_run(args, arm, seed, ann, memory, oracle=None):
    """Train (stamped) arm ``arm`` of seed ``seed`` (``arm_plan``); (work dir, config, test
    options)."""
    work, config, train_options, test_options = arm_plan(args, arm, seed, ann, memory, oracle)
    stamped_training(work, config, train_options)
    return work, config, test_options


def ledger_of(args, arm) -> RunLedger:
    """The committed ledger of ``arm``'s runs: Mask2Former's is the data variant's (shared by
    every MAPS config, like its work dirs), a MAPS arm's is its MAPS config's."""
    name = args.variant_results_name if arm == 'mask2former' else args.results_name
    return RunLedger(osp.join(ROOT, 'benchmarks', 'results', f'{name}_runs.json'))


def run_description(args, config, train_options, test_options, ann, memory=None) -> dict:
    """What one arm's training and test are, for the ledger, computed before they run: the
    config (resolved, portable paths), the options, the sha256 of the labelled annotation
    file, a digest of the data root (images and annotations) and of the memory it reads, and
    the versions the numbers depend on. Not the code: every change anywhere in the package
    would void every record, so each record keeps its commit and sources digest beside it
    (``source_info``) and the published table lists the commits; a change to the models,
    memory or evaluation code that changes results deletes the ledgers it affects, as it
    must delete the stamped work dirs."""
    import torch
    from mmengine.config import Config
    from mmmaps.memory.storage import sha256_file
    resolved = Config.fromfile(osp.join(ROOT, config)).to_dict()
    inputs = dict(annotation=sha256_file(ann),
                  data=directory_digest(osp.abspath(args.data_root)))
    if memory is not None:
        inputs['memory'] = directory_digest(memory)
    return portable(dict(
        config=config, resolved=json.loads(json.dumps(resolved, default=str)),
        train_options=train_options, test_options=test_options, inputs=inputs,
        versions=dict(torch=torch.__version__, python='%d.%d' % sys.version_info[:2])))


def source_info() -> dict:
    """The code a run ran with (kept beside its ledger record, not part of its
    description): the commit and a digest of the mmmaps sources."""
    return dict(commit=git_commit(), sources=directory_digest(osp.join(ROOT, 'mmmaps'), '.py'))


def short_commit(commit: Optional[str]) -> str:
    """12 hex digits, and whether the tree had uncommitted changes."""
    if not commit:
        return '-'
    return commit[:12] + ('+dirty' if commit.endswith('+dirty') else '')


def git_commit() -> str:
    """HEAD of this checkout, '+dirty' when it has uncommitted changes to tracked files
    outside ``benchmarks/results/`` (the ledgers and reports the runs themselves write)."""
    def git(*cmd):
        return subprocess.run(['git', *cmd], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        return git('rev-parse', 'HEAD') + ('+dirty' if git(
            'status', '--porcelain', '--untracked-files=no', '--', '.',
            ':(exclude)benchmarks/results') else '')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def evaluate(args, work, config, name, options, extra=(), memory_classes=None):
    """Test into ``WORK/NAME`` (stamped): the summary, the PQ of the val classes outside
    ``memory_classes`` and the look-alike flip rate."""
    val_ann = osp.abspath(osp.join(args.data_root, 'annotations', 'panoptic_val.json'))
    val_png = osp.abspath(osp.join(args.data_root, 'annotations', 'panoptic_val'))
    test_dir = name.replace(' ', '_')
    prefix = osp.abspath(osp.join(work, test_dir, 'pred'))
    result = stamped_test(work, test_dir, config, options,
                          ['--per-class', '--panoptic-out', prefix, '--force', *extra])
    with open(osp.join(work, test_dir, 'metrics.json')) as f:
        metrics = json.load(f)
    class_pq = {c: metrics[f'coco_panoptic/{c}_PQ'] for c in categories_in(val_ann)}
    absent = sorted(set(class_pq) - memory_classes) if memory_classes else []
    return dict(result, class_PQ=class_pq, absent_classes=absent,
                PQ_absent=mean_pq(class_pq, absent),
                look_alike_flips=100 * look_alike_flips(prefix, val_ann, val_png))


def mean_pq(class_pq: Dict[str, float], classes) -> Optional[float]:
    """The mean PQ of ``classes`` (None for none)."""
    return sum(class_pq[c] for c in classes) / len(classes) if classes else None


def arms(args):
    """Each arm and Mask2Former on the same seeds and subsets; paired differences."""
    if not (args.iters and args.size):
        raise SystemExit('maps_evidence.py arms: give --iters and --size')
    names = ['mask2former'] + list(args.arms or CORE_ARMS)
    jobs = [(arm, seed) for seed in args.seeds for arm in names]

    def describe(job):
        arm, seed = job
        ann, memory, oracle = inputs[seed]
        plan = arm_plan(args, arm, seed, ann, memory, oracle)
        return plan, run_description(args, *plan[1:], ann, None if arm == 'mask2former' else
                                     oracle if arm == 'oracle' else memory)

    def one(job):
        arm, seed = job
        (work, config, train_options, test_options), what = plans[job]
        key, ledger = f'iters{args.iters}/n{args.size}/{arm}/seed{seed}', ledger_of(args, arm)
        result, origin = ledger.lookup(key, what), 'ledger'
        if result is None:
            start, origin = time.time(), 'run here'
            seconds = stamped_training(work, config, train_options)
            result = evaluate(args, work, config, 'test', test_options)
            ledger.record(key, what, result, training_seconds=round(seconds),
                          seconds=round(time.time() - start), date=time.strftime('%Y-%m-%d'),
                          **code)
        print(f'  {arm} seed {seed} ({origin}): PQ {result["PQ"]:.1f} PQ_th '
              f'{result["PQ_th"]:.1f} flips {result["look_alike_flips"]:.1f} %', flush=True)
        return job, dict(result, origin=origin, commit=ledger.info(key).get('commit'))

    inputs = {seed: seed_inputs(args, seed, oracle='oracle' in names) for seed in args.seeds}
    # described here, one after another: reading configs is not thread-safe (mmengine's
    # base-config lookup goes through pkg_resources)
    plans = {job: describe(job) for job in jobs}
    code = source_info()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(pool.map(one, jobs))
    columns = ('PQ', 'PQ_th', 'look_alike_flips')

    def paired_arms(arm, reference):
        """{column: the paired statistic of (arm - reference) over the seeds}."""
        return {c: paired_statistic([results[(arm, s)][c] - results[(reference, s)][c]
                                     for s in args.seeds]) for c in columns}

    def table(header, cells_of):
        return [f'| {header} (n = {len(args.seeds)}) | ΔPQ | ΔPQ_th | Δ look-alike flips |',
                '|---|---|---|---|'] + [
            f'| {arm} | ' + ' | '.join(format_cell(cells[c]) for c in columns) + ' |'
            for arm, cells in cells_of.items()]

    paired = {arm: paired_arms(arm, 'mask2former') for arm in names[1:]}
    # the pre-registered reading compares MAPS with its controls, paired on the same seeds
    maps_against = ({arm: paired_arms('maps', arm) for arm in names[1:] if arm != 'maps'}
                    if 'maps' in names else {})
    against_base = {f'{arm} - {base}': paired_arms(arm, base)
                    for arm, base in ADDS_ONE_THING_TO.items() if {arm, base} <= set(names)}
    lines = [f'Tiny R18, {args.iters} iterations on {args.size} labelled images (each seed its '
             f'own subset, shared by every arm), seeds {" ".join(map(str, args.seeds))}; '
             'synthetic val (100 images). Look-alike flips: % of the ground-truth pixels of a '
             'look-alike class (predicted as it or its twin) predicted as the twin.', '']
    lines += table('arm - Mask2Former', paired)
    if maps_against:
        lines += ['', 'MAPS against each other arm, on the same seeds:', '']
        lines += table('maps - arm', maps_against)
    if against_base:
        lines += ['', 'Arms against the arm they add one thing to, on the same seeds:', '']
        lines += table('arm - base', against_base)
    lines += ['', '(mean paired difference ± half-width of its 95 % t-interval)', '',
              '| arm | seed | PQ | PQ_th | look-alike flips | from | commit |',
              '|---|---|---|---|---|---|---|']
    for (arm, seed), r in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        lines.append(f'| {arm} | {seed} | {r["PQ"]:.1f} | {r["PQ_th"]:.1f} | '
                     f'{r["look_alike_flips"]:.1f} % | {r["origin"]} | '
                     f'{short_commit(r["commit"])} |')
    lines += ['', '("ledger": the result recorded earlier for the same run description, in '
              'benchmarks/results/*_runs.json; "run here": trained and tested by this call; '
              'commit: the code the run ran with)']
    return dict(paired=paired, maps_against=maps_against, against_base=against_base,
                runs=[dict(arm=a, seed=s, result=r) for (a, s), r in results.items()]), \
        '\n'.join(lines)


def counterfactual(args):
    """Each retrieving MAPS arm tested with its memory, memory off, a shuffled memory and
    the memory of each single scene type; paired differences against memory off. Like the
    arms phase, an (arm, seed) whose trained model and tests are in the committed ledger
    (key ``.../ARM/seedS/counterfactual``, the description holding every test memory's
    digest) is neither trained nor tested again."""
    if not (args.iters and args.size):
        raise SystemExit('maps_evidence.py counterfactual: give --iters and --size')
    chosen = args.arms or ['maps']
    bad = [a for a in chosen if a not in RETRIEVING_ARMS]
    if bad:
        raise SystemExit(f'maps_evidence.py counterfactual: {bad} retrieve nothing')
    # every memory is built before any training or test runs (parallel jobs share them)
    inputs, tests = {}, {}
    for seed in args.seeds:
        ann, memory, _ = seed_inputs(args, seed)
        inputs[seed] = (ann, memory)
        tests[seed] = {OWN_MEMORY: ((), (), categories_in(ann)),
                       MEMORY_OFF_TEST: (MEMORY_OFF, (), None),
                       'shuffled memory': (SHUFFLED, (), categories_in(ann))}
        for scene, sub in scene_subsets(args, ann).items():
            root = build_memory(args, sub, osp.join(args.work_dir, 'memory',
                                                    f'n{args.size}_seed{seed}_{scene}'))
            tests[seed][f'memory of {scene} only'] = ((), ('--memory', root),
                                                      categories_in(sub))

    def describe(job):
        """The arm's run description (``run_description``) and its tests: their options,
        and the digest of each memory a test reads instead of the arm's own."""
        arm, seed = job
        ann, memory = inputs[seed]
        plan = arm_plan(args, arm, seed, ann, memory)
        what = run_description(args, *plan[1:], ann, memory)
        what['tests'] = {
            name: dict(options=list(extra_options), args=portable(list(extra_args)),
                       memory=directory_digest(extra_args[1]) if extra_args else None)
            for name, (extra_options, extra_args, _) in tests[seed].items()}
        return plan, what

    def one(job):
        arm, seed = job
        (work, config, train_options, options), what = plans[job]
        key, ledger = (f'iters{args.iters}/n{args.size}/{arm}/seed{seed}/counterfactual',
                       ledger_of(args, arm))
        recorded = ledger.lookup(key, what)
        if recorded is not None:
            print(f'  {arm} seed {seed}: {len(recorded["rows"])} tests (ledger)', flush=True)
            return [dict(r, origin='ledger') for r in recorded['rows']]
        start = time.time()
        seconds = stamped_training(work, config, train_options)
        rows = []
        for name, (extra_options, extra_args, memory_classes) in tests[seed].items():
            result = evaluate(args, work, config, name,
                              [o for o in options if 'wrong_memory' not in o]
                              + list(extra_options), extra_args, memory_classes)
            rows.append(dict(result, seed=seed, arm=arm, test=name))
            print(f'  {arm} seed {seed} {name}: PQ {result["PQ"]:.1f}', flush=True)
        ledger.record(key, what, dict(rows=rows), training_seconds=round(seconds),
                      seconds=round(time.time() - start), date=time.strftime('%Y-%m-%d'),
                      **code)
        return [dict(r, origin='run here') for r in rows]

    # described one after another in this thread (reading configs is not thread-safe)
    jobs = [(arm, seed) for seed in args.seeds for arm in chosen]
    plans = {job: describe(job) for job in jobs}
    code = source_info()
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = [r for job_rows in pool.map(one, jobs) for r in job_rows]
    robustness = against_memory_off(rows, args.seeds)
    normal_cost = {arm: paired_cells(rows, args.seeds, (arm, OWN_MEMORY), ('maps', OWN_MEMORY))
                   for arm in chosen if arm != 'maps' and 'maps' in chosen}
    lines = [f'MAPS (tiny R18, {osp.basename(args.maps_config)}), {args.iters} iterations on '
             f'{args.size} labelled images per seed (each seed its own subset, shared by every '
             f'arm), seeds {" ".join(map(str, args.seeds))}, tested with wrong memories; '
             'synthetic val (100 images). A single scene type\'s memory is built from the '
             "seed's labelled images of that scene type: right for val images of that type, "
             'wrong for the others. PQ absent: mean PQ of the val classes in no image of the '
             'memory (memory off: its PQ on the same classes).', '',
             f'Goal: a wrong memory no worse than memory off. (test - memory off), n = '
             f'{len(args.seeds)} seeds, mean paired difference ± half-width of its 95 % '
             't-interval:', '',
             '| arm | test | ΔPQ | ΔPQ_th | ΔPQ absent (n) | Δ look-alike flips |',
             '|---|---|---|---|---|---|']
    for (arm, test), cells in robustness.items():
        lines.append(f'| {arm} | {test} | ' + ' | '.join(
            format_cell(cells[c], with_n=c == 'PQ_absent') for c in ROBUSTNESS_COLUMNS) + ' |')
    if normal_cost:
        lines += ['', 'The cost on the normal row: (arm - plain MAPS), both with their own '
                  'memory:', '', '| arm - maps | ΔPQ | ΔPQ_th | Δ look-alike flips |',
                  '|---|---|---|---|']
        for arm, cells in normal_cost.items():
            lines.append(f'| {arm} | ' + ' | '.join(
                format_cell(cells[c]) for c in ('PQ', 'PQ_th', 'look_alike_flips')) + ' |')
    lines += ['', '| arm | seed | test | PQ | PQ_th | PQ absent (classes) | look-alike flips '
              '| from |', '|---|---|---|---|---|---|---|---|']
    for r in sorted(rows, key=lambda r: (r['arm'], r['seed'])):
        absent = ('-' if r['PQ_absent'] is None else
                  f'{r["PQ_absent"]:.1f} ({", ".join(r["absent_classes"])})')
        lines.append(f'| {r["arm"]} | {r["seed"]} | {r["test"]} | {r["PQ"]:.1f} | '
                     f'{r["PQ_th"]:.1f} | {absent} | {r["look_alike_flips"]:.1f} % | '
                     f'{r["origin"]} |')
    lines += ['', '("ledger": the tests recorded earlier for the same trained run and test '
              'memories, in benchmarks/results/*_runs.json; "run here": trained and tested by '
              'this call)']
    return dict(rows=rows, against_memory_off=[dict(arm=a, test=t, **cells)
                                               for (a, t), cells in robustness.items()],
                normal_cost=normal_cost), '\n'.join(lines)


def difference(row: dict, reference: dict, column: str) -> Optional[float]:
    """``row``'s ``column`` minus ``reference``'s; for PQ_absent the reference's PQ on the
    classes absent from ``row``'s memory (None when it lacks no val class)."""
    if column != 'PQ_absent':
        return row[column] - reference[column]
    if not row['absent_classes']:
        return None
    return row['PQ_absent'] - mean_pq(reference['class_PQ'], row['absent_classes'])


def paired_statistic(diffs_per_seed) -> dict:
    """The paired statistic of per-seed differences (seeds with None left out)."""
    diffs = [d for d in diffs_per_seed if d is not None]
    mean, half = interval95(diffs) if diffs else (None, None)
    return dict(mean=mean, half_width_95=half, n=len(diffs), values=diffs)


def paired_cells(rows, seeds, test, reference, columns=('PQ', 'PQ_th', 'look_alike_flips')):
    """{column: paired (test - reference) over ``seeds``}; ``test`` and ``reference`` are
    (arm, test name)."""
    by = {(r['arm'], r['seed'], r['test']): r for r in rows}
    return {c: paired_statistic([difference(by[(test[0], s, test[1])],
                                            by[(reference[0], s, reference[1])], c)
                                 for s in seeds])
            for c in columns}


def against_memory_off(rows, seeds):
    """{(arm, test): {column: paired (test - memory off)}} for every test of every arm but
    memory off, and per arm the single-scene memories together (each seed's mean of their
    differences, then paired over the seeds)."""
    by = {(r['arm'], r['seed'], r['test']): r for r in rows}
    out = {}
    for arm in dict.fromkeys(r['arm'] for r in rows):
        names = [t for t in dict.fromkeys(r['test'] for r in rows if r['arm'] == arm)
                 if t != MEMORY_OFF_TEST]
        for test in names:
            out[(arm, test)] = paired_cells(rows, seeds, (arm, test), (arm, MEMORY_OFF_TEST),
                                            ROBUSTNESS_COLUMNS)
        scenes = [t for t in names if t.startswith('memory of ')]
        if scenes:
            cells = {}
            for c in ROBUSTNESS_COLUMNS:
                per_seed = []
                for s in seeds:
                    diffs = [difference(by[(arm, s, t)], by[(arm, s, MEMORY_OFF_TEST)], c)
                             for t in scenes]
                    diffs = [d for d in diffs if d is not None]
                    per_seed.append(statistics.mean(diffs) if diffs else None)
                cells[c] = paired_statistic(per_seed)
            out[(arm, SCENE_MEMORIES)] = cells
    return out


def format_cell(cell, with_n=False):
    if cell['mean'] is None:
        return '-'
    return (f'{cell["mean"]:+.2f} ± {cell["half_width_95"]:.2f}'
            + (f' ({cell["n"]})' if with_n else ''))


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    prepare(args)
    payload, text = dict(precheck=precheck, plateau=plateau, curve=curve, arms=arms,
                         counterfactual=counterfactual)[args.phase](args)
    payload.update(params=vars(args), wall_seconds=time.time() - start)
    print('\n' + text)
    os.makedirs(args.work_dir, exist_ok=True)
    with open(osp.join(args.work_dir, f'{args.phase}.json'), 'w') as f:
        json.dump(payload, f, indent=2)
    if args.publish:
        publish(published_name(args), payload, text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
