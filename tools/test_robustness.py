"""Robustness to common corruptions (Panoptic SegFormer section 4.4, Table 11).

    python tools/test_robustness.py CONFIG CHECKPOINT [--corruptions benchmark]
        [--severities 1 2 3 4 5] [--seed 0] [--subset N | --subset-ids FILE]
        [--work-dir DIR] [--cfg-options ...]

Evaluates the test set once clean, then once per corruption x severity with
``ImageCorruption`` (mmmaps/datasets/transforms/corruption.py, a deterministic
wrapper of ``imagecorruptions``) inserted right after ``LoadImageFromFile`` in
``test_dataloader.dataset.pipeline`` - i.e. the images are corrupted at their
original resolution, before resizing, as COCO-C is made. Each evaluation builds a
fresh Runner from the config (``load_from`` = CHECKPOINT) that logs into its own
sub-directory: ``WORK_DIR/clean`` and ``WORK_DIR/CORRUPTION/severity_S``.

Printed: a table like the paper's Table 11 (rows: clean, the mean over the
corruptions, each corruption averaged over the severities evaluated; columns: PQ
and, when the config's evaluators give them, AP and mIoU) and a per-severity PQ
table. Everything - raw metrics of every run, the summaries, the settings - goes to
``WORK_DIR/robustness.json``, rewritten (atomically) after every evaluation so an
interrupted run keeps what it finished.

Corruption sets (``--corruptions``, several may be given; their union is run):

* ``benchmark`` (default): the 16 corruptions of PSF Table 11, which follows Kamann &
  Rother (CVPR 2020, "Benchmarking the robustness of semantic segmentation models"),
  in the table's order and groups:
  blur    = motion_blur, defocus_blur, glass_blur, gaussian_blur;
  noise   = gaussian_noise, impulse_noise, shot_noise, speckle_noise;
  digital = brightness, contrast, saturate, jpeg_compression;
  weather = snow, spatter, fog, frost.
  This is NOT imagecorruptions' 'common' set (the 15 ImageNet-C corruptions, which
  mmdet's test_robustness.py calls 'benchmark'): Table 11 has no zoom_blur,
  elastic_transform or pixelate, and does use the 'validation' corruptions
  speckle_noise, gaussian_blur, spatter and saturate. ('common' + speckle_noise would
  also be 16 corruptions, but not the ones the table lists.)
* ``blur``, ``noise``, ``digital``, ``weather``: one group of Table 11 (the paper's
  grouping: brightness is 'digital' here, 'weather' in imagecorruptions).
* ``all``: all 19 corruptions of imagecorruptions: the 16 above, then zoom_blur,
  elastic_transform, pixelate.
* ``common``: imagecorruptions' 15 ImageNet-C corruptions (mmdet's COCO-C set).
* any single corruption name.

The "mean" row averages the per-corruption means, so with the default settings it is
the paper's "Mean" column (16 corruptions x 5 severities).

Subset (``--subset N`` or ``--subset-ids FILE``): the paper reports Table 11 on a
2000-image subset of COCO val2017 whose image list was not released. ``--subset N``
takes the N images with the smallest image ids of the test annotation file
(``--subset 2000`` on val2017: its 2000 smallest ids, from 139 up), ``--subset-ids FILE``
the image ids listed in FILE (integers separated by white space or commas; ``#``
starts a comment; repeats count once). Every id must be in the test annotation file
and N at most its number of images. The tool writes the test annotation file and the
``ann_file`` of every test evaluator (CocoPanopticMetric reads all images of its
``ann_file`` when ``outfile_prefix`` is set, CocoMetric always does), filtered to the
subset, to ``WORK_DIR/subset/`` (atomically; nothing is written next to the data) and
points the test dataset and those evaluators at them, so the images run and PQ, AP and
mIoU are all over the subset. The ids go to ``robustness.json`` (``subset``).
``--severities 0`` is accepted for compatibility with mmdet's tool and ignored (the
clean set is always evaluated once). Corruption is per image deterministic (seeded
from ``--seed``, the corruption, the severity and the image's file name), so results
do not depend on the number of GPUs, workers or the data order.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import copy
import gc
import json
import logging
import os
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

from mmengine.config import Config
from mmengine.dist import is_distributed, is_main_process
from mmengine.fileio import get_local_path
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from terminaltables import AsciiTable

from mmmaps.datasets.transforms import ImageCorruption, corruption_names
from mmmaps.evaluation import panoptic_summary
from mmmaps.memory.storage import write_json as write_json_atomic
from mmmaps.utils.tool_utils import load_tool_config, parse_launch_args

# PSF Table 11 (after Kamann & Rother 2020), in the table's column order.
BENCHMARK_GROUPS: 'OrderedDict[str, Tuple[str, ...]]' = OrderedDict([
    ('blur', ('motion_blur', 'defocus_blur', 'glass_blur', 'gaussian_blur')),
    ('noise', ('gaussian_noise', 'impulse_noise', 'shot_noise', 'speckle_noise')),
    ('digital', ('brightness', 'contrast', 'saturate', 'jpeg_compression')),
    ('weather', ('snow', 'spatter', 'fog', 'frost')),
])
BENCHMARK: Tuple[str, ...] = sum(BENCHMARK_GROUPS.values(), ())
# imagecorruptions' corruptions that Table 11 leaves out, with imagecorruptions' groups
EXTRA_GROUPS = OrderedDict([('zoom_blur', 'blur'), ('elastic_transform', 'digital'),
                            ('pixelate', 'digital')])
COMMON: Tuple[str, ...] = (  # imagecorruptions.get_corruption_names('common')
    'gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur',
    'motion_blur', 'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast',
    'elastic_transform', 'pixelate', 'jpeg_compression')
SETS = ('benchmark', 'all', 'common') + tuple(BENCHMARK_GROUPS)
TABLE_METRICS = ('PQ', 'AP', 'mIoU')


def group_of(corruption: str) -> str:
    for group, names in BENCHMARK_GROUPS.items():
        if corruption in names:
            return group
    return EXTRA_GROUPS.get(corruption, '-')


def resolve_corruptions(requested: Sequence[str]) -> List[str]:
    """Expand set names to corruption names (union, first-seen order, no duplicates)."""
    available = corruption_names()
    expanded: List[str] = []
    for item in requested:
        if item == 'benchmark':
            expanded += BENCHMARK
        elif item == 'all':
            expanded += BENCHMARK + tuple(n for n in available if n not in BENCHMARK)
        elif item == 'common':
            expanded += COMMON
        elif item in BENCHMARK_GROUPS:
            expanded += BENCHMARK_GROUPS[item]
        elif item in available:
            expanded.append(item)
        else:
            raise ValueError(f'unknown corruption or set {item!r}; choose from '
                             f'{", ".join(SETS + tuple(available))}')
    missing = [n for n in expanded if n not in available]
    if missing:  # an older imagecorruptions
        raise ValueError(f'imagecorruptions does not provide {missing}')
    return list(OrderedDict.fromkeys(expanded))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Evaluate a model on corrupted test images (PQ under common '
        'corruptions, Panoptic SegFormer Table 11)',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='corruption sets: benchmark (default; the 16 of PSF Table 11), blur, noise, '
        'digital, weather (its groups), all (all 19 of imagecorruptions), common (the 15 '
        'ImageNet-C ones); or corruption names: ' + ', '.join(corruption_names()))
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--corruptions', nargs='+', default=['benchmark'],
                        choices=SETS + corruption_names(), metavar='SET_OR_NAME',
                        help='corruption sets or names (see below); default: benchmark')
    parser.add_argument('--severities', nargs='+', type=int, default=[1, 2, 3, 4, 5],
                        choices=range(6), metavar='S',
                        help='severities 1..5 (default: all; 0 = clean, always run once)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the corruption noise (per image, see ImageCorruption)')
    subset = parser.add_mutually_exclusive_group()
    subset.add_argument('--subset', type=int, metavar='N',
                        help='evaluate only the N test images with the smallest image ids '
                        '(the paper: 2000 images of COCO val2017)')
    subset.add_argument('--subset-ids', metavar='FILE',
                        help='evaluate only the test images whose ids FILE lists (white space '
                        'or comma separated, # comments)')
    parser.add_argument('--work-dir',
                        help='directory for robustness.json and one log sub-directory per '
                        'evaluation')
    return parse_launch_args(parser, argv)


# ---------------------------------------------------------------- subset of the test set
def read_subset_ids(path: str) -> List[int]:
    """Image ids listed in a text file: integers separated by white space or commas,
    ``#`` to the end of a line is a comment; repeats count once (first-seen order)."""
    with open(path) as f:
        text = re.sub(r'#[^\n]*', '', f.read())
    ids = []
    for token in re.split(r'[\s,]+', text):
        if not token:
            continue
        try:
            ids.append(int(token))
        except ValueError:
            raise ValueError(f'{path}: {token!r} is not an integer image id') from None
    if not ids:
        raise ValueError(f'{path} lists no image ids')
    return list(OrderedDict.fromkeys(ids))


def select_subset(available: Sequence[int], num: Optional[int] = None,
                  ids: Optional[Sequence[int]] = None, source: str = 'the test set') -> List[int]:
    """The ``num`` smallest of ``available`` image ids, or ``ids`` checked against them."""
    if num is not None:
        if num < 1:
            raise ValueError(f'--subset must be at least 1, got {num}')
        if num > len(available):
            raise ValueError(f'--subset {num} exceeds the {len(available)} images of {source}')
        return sorted(available)[:num]
    present = set(available)
    absent = [i for i in ids if i not in present]
    if absent:
        shown = ', '.join(map(str, absent[:10])) + (', ...' if len(absent) > 10 else '')
        raise ValueError(f'{len(absent)} of the {len(ids)} subset image ids are not in '
                         f'{source}: {shown}')
    return list(ids)


def _load_json(path: str, backend_args: Optional[dict]) -> dict:
    with get_local_path(path, backend_args=backend_args) as local:
        with open(local) as f:
            return json.load(f)


def _filter_coco(ann: dict, keep: set) -> dict:
    """A COCO (instances or panoptic) annotation dict with only the images in ``keep``."""
    out = {k: v for k, v in ann.items() if k not in ('images', 'annotations')}
    out['images'] = [img for img in ann['images'] if img['id'] in keep]
    out['annotations'] = [a for a in ann.get('annotations', []) if a['image_id'] in keep]
    return out


def _test_ann_file(cfg: Config) -> Tuple[dict, str]:
    dataset = cfg.test_dataloader.get('dataset', {})
    ann_file = dataset.get('ann_file') if isinstance(dataset, dict) else None
    if not ann_file:
        raise ValueError('--subset/--subset-ids need test_dataloader.dataset.ann_file (a '
                         f'COCO-format file; dataset type {dataset.get("type")!r}; wrapped '
                         'datasets are not supported)')
    if dataset.get('indices') is not None:
        raise ValueError('test_dataloader.dataset.indices is set; it would select images '
                         'after the subset, and the evaluators would not follow it')
    data_root = dataset.get('data_root')
    if data_root and not osp.isabs(ann_file) and '://' not in ann_file:
        ann_file = osp.join(data_root, ann_file)
    return dataset, ann_file


def _evaluators(cfg: Config) -> List[dict]:
    evaluator = cfg.get('test_evaluator')
    if isinstance(evaluator, dict) and 'metrics' in evaluator:  # an Evaluator config
        evaluator = evaluator['metrics']
    if isinstance(evaluator, dict):
        evaluator = [evaluator]
    return [e for e in evaluator or [] if isinstance(e, dict) and e.get('ann_file')]


def restrict_to_subset(cfg: Config, num: Optional[int] = None,
                       ids: Optional[Sequence[int]] = None) -> dict:
    """Point ``cfg``'s test dataset and test evaluators at annotation files filtered to a
    subset of the test images, written to ``WORK_DIR/subset/``; returns what was chosen.

    Every rank writes the same files, each through its own temporary file and a rename.
    """
    dataset, ann_file = _test_ann_file(cfg)
    ann = _load_json(ann_file, dataset.get('backend_args'))
    chosen = select_subset([img['id'] for img in ann['images']], num, ids, ann_file)
    keep = set(chosen)
    out_dir = osp.join(osp.abspath(cfg.work_dir), 'subset')
    os.makedirs(out_dir, exist_ok=True)
    written: 'OrderedDict[str, str]' = OrderedDict()  # source -> filtered copy

    def filtered(source: str, content: Optional[dict], backend_args) -> str:
        key = source if '://' in source else osp.abspath(source)
        if key in written:  # e.g. the dataset's and CocoPanopticMetric's file
            return written[key]
        if content is None:
            content = _load_json(source, backend_args)
            missing = keep - {img['id'] for img in content['images']}
            if missing:
                raise ValueError(f'{len(missing)} subset image ids are not in {source}: '
                                 f'{sorted(missing)[:10]}')
        name = osp.basename(source)
        if name in map(osp.basename, written.values()):
            name = f'{len(written)}_{name}'
        written[key] = osp.join(out_dir, name)
        write_json_atomic(written[key], _filter_coco(content, keep))
        return written[key]

    dataset['ann_file'] = filtered(ann_file, ann, None)
    for evaluator in _evaluators(cfg):
        evaluator['ann_file'] = filtered(evaluator['ann_file'], None,
                                         evaluator.get('backend_args'))
    return OrderedDict(
        rule=f'{num} smallest image ids' if num is not None else 'listed image ids',
        num_images=len(chosen), of=len(ann['images']), image_ids=chosen,
        ann_files=OrderedDict(written))


def _step_type(step) -> str:
    t = step.get('type') if isinstance(step, dict) else None
    name = t if isinstance(t, str) else getattr(t, '__name__', '')
    return name.split('.')[-1]


def load_image_index(cfg: Config) -> int:
    """Position of ``LoadImageFromFile`` in the test pipeline (the corruption goes after)."""
    dataset = cfg.test_dataloader.get('dataset', {})
    pipeline = dataset.get('pipeline')
    if not isinstance(pipeline, (list, tuple)):
        raise ValueError('test_dataloader.dataset has no pipeline list to insert the '
                         f'corruption into (dataset type {dataset.get("type")!r}; wrapped '
                         'datasets are not supported)')
    types = [_step_type(step) for step in pipeline]
    if 'ImageCorruption' in types:
        raise ValueError('test_dataloader.dataset.pipeline already has an ImageCorruption; '
                         'this tool inserts its own')
    if 'LoadImageFromFile' not in types:
        raise ValueError('test_dataloader.dataset.pipeline has no LoadImageFromFile '
                         f'(steps: {types}); the corruption must follow the image loading')
    return types.index('LoadImageFromFile')


def setting_cfg(cfg: Config, tag: str, corruption: Optional[str], severity: Optional[int],
                seed: int) -> Config:
    """A copy of ``cfg`` for one evaluation: own work_dir/logger, corruption inserted."""
    run_cfg = copy.deepcopy(cfg)
    run_cfg.work_dir = osp.join(cfg.work_dir, tag)
    # the Runner names its logger and message hub after experiment_name + a timestamp
    # in seconds: without a distinct name, two evaluations started within one second
    # would log into the first one's file
    base = osp.splitext(osp.basename(cfg.filename))[0] if cfg.filename else 'robustness'
    run_cfg.experiment_name = f'{base}_{tag.replace(os.sep, "_")}'
    # likewise the visualizer is a named global instance (mmdet's runtime names it
    # 'visualizer'): under a shared name every run would reuse the first run's save_dir
    if isinstance(run_cfg.get('visualizer'), dict) and 'name' in run_cfg.visualizer:
        run_cfg.visualizer.name = run_cfg.experiment_name
    if corruption is not None:
        pipeline = run_cfg.test_dataloader.dataset.pipeline
        pipeline.insert(load_image_index(run_cfg) + 1,
                        dict(type='ImageCorruption', corruption=corruption,
                             severity=severity, seed=seed))
    return run_cfg


def _close_file_handlers(runner) -> None:
    for handler in list(runner.logger.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()
            runner.logger.removeHandler(handler)


def evaluate(run_cfg: Config) -> Dict[str, float]:
    runner = Runner.from_cfg(run_cfg) if 'runner_type' not in run_cfg \
        else RUNNERS.build(run_cfg)
    try:
        metrics = runner.test()
    finally:
        _close_file_handlers(runner)
        del runner
        gc.collect()
    return {k: _jsonable(v) for k, v in metrics.items()}


def _jsonable(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _mean(values: List[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def aggregate(report: dict) -> None:
    """Fill ``per_corruption`` (mean over severities) and ``mean`` (over corruptions)."""
    columns = list(report['clean']['summary']) if report.get('clean') else []
    per_corruption = OrderedDict()
    for name, by_severity in report['corrupted'].items():
        if by_severity:
            per_corruption[name] = {c: _mean([r['summary'].get(c)
                                              for r in by_severity.values()])
                                    for c in columns}
    report['per_corruption'] = per_corruption
    report['mean'] = {c: _mean([m[c] for m in per_corruption.values()]) for c in columns} \
        if per_corruption else None


def write_json(report: dict, path: str) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, path)


def _fmt(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.1f}'


def format_tables(report: dict) -> str:
    clean = report['clean']['summary']
    metrics = [m for m in TABLE_METRICS if clean.get(m) is not None]
    if not metrics:  # not a panoptic config: show whatever summary numbers exist
        metrics = [m for m, v in clean.items() if v is not None]
    if not metrics:
        return ('no PQ/AP/mIoU among the evaluators\' metrics; see the raw metrics in '
                'robustness.json')
    rows = [['setting', 'group'] + metrics,
            ['clean', '-'] + [_fmt(clean[m]) for m in metrics]]
    if report['mean'] is not None:
        n = len(report['per_corruption'])
        rows.append([f'mean ({n} corruption{"s" if n != 1 else ""})', '-']
                    + [_fmt(report['mean'][m]) for m in metrics])
    for name, means in report['per_corruption'].items():
        rows.append([name, group_of(name)] + [_fmt(means[m]) for m in metrics])
    severities = report['severities']
    table = AsciiTable(rows, title=f'Robustness (mean over severities '
                       f'{",".join(map(str, severities))})')
    table.inner_footing_row_border = False
    out = [table.table]

    if report['per_corruption']:
        metric = metrics[0]
        rows = [['corruption'] + [f'{metric} s{s}' for s in severities] + ['mean']]
        for name, by_severity in report['corrupted'].items():
            if not by_severity:
                continue
            rows.append([name] + [_fmt(by_severity[str(s)]['summary'].get(metric))
                                  if str(s) in by_severity else '-' for s in severities]
                        + [_fmt(report['per_corruption'][name][metric])])
        rows.append(['mean'] + [
            _fmt(_mean([b[str(s)]['summary'].get(metric)
                        for b in report['corrupted'].values() if str(s) in b]))
            for s in severities] + [_fmt(report['mean'][metric])])
        table = AsciiTable(rows, title=f'{metric} per severity (clean: {_fmt(clean[metric])})')
        out.append(table.table)
    return '\n'.join(out)


def _is_main() -> bool:
    # before the first Runner has initialised torch.distributed, is_main_process() is
    # True on every rank: fall back to the launcher's RANK
    return is_main_process() if is_distributed() else os.environ.get('RANK', '0') == '0'


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    corruptions = resolve_corruptions(args.corruptions)
    severities = sorted({s for s in args.severities if s != 0})
    cfg = load_tool_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    cfg.load_from = args.checkpoint
    index = load_image_index(cfg)  # fail before any evaluation
    for name in corruptions:  # validates names/severities against imagecorruptions
        for s in severities:
            ImageCorruption(name, s, args.seed)
    subset = None
    if args.subset is not None or args.subset_ids is not None:
        ids = read_subset_ids(args.subset_ids) if args.subset_ids is not None else None
        subset = restrict_to_subset(cfg, num=args.subset, ids=ids)
        if _is_main():
            print(f'[robustness] evaluating {subset["num_images"]} of the {subset["of"]} test '
                  f'images ({subset["rule"]})', flush=True)

    settings = [('clean', None, None)] + [
        (osp.join(c, f'severity_{s}'), c, s) for c in corruptions for s in severities]
    out_json = osp.join(osp.abspath(cfg.work_dir), 'robustness.json')
    report = OrderedDict(
        config=args.config, checkpoint=args.checkpoint, seed=args.seed,
        corruption_sets=list(args.corruptions), corruptions=corruptions,
        groups={c: group_of(c) for c in corruptions}, severities=severities,
        transform=dict(type='ImageCorruption', inserted_after='LoadImageFromFile',
                       pipeline_index=index + 1),
        subset=subset, complete=False, clean=None,
        corrupted=OrderedDict((c, OrderedDict()) for c in corruptions),
        per_corruption=OrderedDict(), mean=None)

    for k, (tag, corruption, severity) in enumerate(settings, 1):
        what = 'clean' if corruption is None else f'{corruption} severity {severity}'
        if _is_main():
            print(f'[robustness {k}/{len(settings)}] evaluating {what}', flush=True)
        run_cfg = setting_cfg(cfg, tag, corruption, severity, args.seed)
        metrics = evaluate(run_cfg)
        entry = OrderedDict(summary=panoptic_summary(metrics), metrics=metrics,
                            work_dir=run_cfg.work_dir)
        if corruption is None:
            report['clean'] = entry
        else:
            entry['corruption'] = dict(name=corruption, severity=severity, seed=args.seed)
            report['corrupted'][corruption][str(severity)] = entry
        if _is_main():
            pq = entry['summary'].get('PQ')
            print(f'[robustness {k}/{len(settings)}] {what}: '
                  + (f'PQ {pq:.2f}' if pq is not None else 'no PQ'), flush=True)
            aggregate(report)
            report['complete'] = k == len(settings)
            os.makedirs(osp.dirname(out_json), exist_ok=True)
            write_json(report, out_json)

    if _is_main():
        print(format_tables(report))
        print(f'robustness results written to {out_json}')
    return report


if __name__ == '__main__':
    main()
