"""Test (and evaluate) a model: ``python tools/test.py CONFIG CHECKPOINT``.

``python tools/test.py CONFIG EXPORT_DIR --backend onnxruntime`` evaluates an ONNX export
(``tools/deployment/export_onnx.py``) the same way: same dataset, evaluators, summary and
``--panoptic-out`` files, so the exported model can be compared with the checkpoint.

For a panoptic model the configured evaluators print mmdet's PQ, COCO AP and
mIoU tables; this tool then prints one summary table (PQ, PQ_th, PQ_st, SQ,
RQ, AP, mIoU) and writes all metrics to ``WORK_DIR/metrics.json``.

A MAPS checkpoint can be evaluated with another memory than the one it was
trained with, without retraining: ``--memory DIR`` (e.g. the training memory
plus newly labelled images, ``tools/build_memory.py CONFIG --append``). It is
``--cfg-options memory.root=DIR`` marked as a deliberate swap, and the hook logs
which memory (recorded in the checkpoint meta) the new one replaces; a memory
built with other encoders or dimensions is refused.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import json
import os
import os.path as osp
import time
from typing import List, Tuple

from mmengine.dist import is_main_process
from mmengine.registry import RUNNERS

from mmdet.engine.hooks.utils import trigger_visualization_hook
from mmdet.evaluation import DumpDetResults

from mmmaps.evaluation import format_summary_table, panoptic_summary
from mmmaps.utils.output_dirs import check_targets, remove_targets, write_record
from mmmaps.utils.tool_utils import load_tool_config, parse_launch_args, tool_errors


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='MMDet test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint',
                        help='checkpoint file (--backend pytorch) or export folder of '
                        'tools/deployment/export_onnx.py (--backend onnxruntime)')
    parser.add_argument(
        '--backend', choices=('pytorch', 'onnxruntime'), default='pytorch',
        help='onnxruntime: evaluate an ONNX export with the same pipeline, evaluators and '
        'outputs (the config\'s data preprocessor, fusion head and test_cfg; MAPS retrieves '
        'with the exported key encoder)')
    parser.add_argument('--ort-threads', type=int,
                        help='onnxruntime intra-op threads (default: all cores)')
    parser.add_argument('--work-dir', help='directory for logs and metrics.json')
    parser.add_argument('--out', help='dump raw predictions to a pickle file (.pkl)')
    parser.add_argument(
        '--panoptic-out', metavar='PREFIX',
        help='also save panoptic predictions in COCO format: PREFIX.panoptic.json and '
        'PREFIX.panoptic/*.png (readable by panopticapi); existing ones are replaced only '
        'with --force, and only when an earlier --panoptic-out wrote them')
    parser.add_argument(
        '--force', action='store_true',
        help='--panoptic-out: replace the PREFIX.* files an earlier run wrote (a file you '
        'added to them, or one it did not write, is refused even with --force)')
    parser.add_argument(
        '--per-class', action='store_true',
        help='per-class PQ/SQ/RQ: print the class table of every panoptic evaluator and '
        'write CLASS_PQ/_SQ/_RQ to metrics.json (CocoPanopticMetric becomes '
        'FastCocoPanopticMetric, whose default backend computes the same numbers)')
    parser.add_argument(
        '--memory', metavar='DIR',
        help='MAPS: evaluate with this memory root instead of memory.root (the checkpoint '
        'meta records the training memory; encoders and dimensions must match it)')
    parser.add_argument(
        '--allow-incompatible-memory', action='store_true',
        help='MAPS: run (with a loud warning) although the memory was built with other '
        'encoders or dimensions than the checkpoint was trained with (default: refuse)')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir',
                        help='save painted predictions to WORK_DIR/TIMESTAMP/SHOW_DIR')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    return parse_launch_args(parser, argv)


PANOPTIC_METRICS = ('CocoPanopticMetric', 'FastCocoPanopticMetric')


def _panoptic_evaluators(cfg, flag: str) -> list:
    """The PQ evaluators of ``cfg.test_evaluator`` (error naming ``flag`` if none)."""
    evaluators = cfg.test_evaluator
    evaluators = evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]
    found = [e for e in evaluators
             if str(e.get('type')).rpartition('.')[2] in PANOPTIC_METRICS]
    if not found:
        raise ValueError(f'{flag} needs a CocoPanopticMetric in test_evaluator')
    return found


PANOPTIC_PREDICTIONS = 'panoptic predictions of tools/test.py'  # their record's ``what``


def _panoptic_out_targets(prefix: str) -> Tuple[str, List[str]]:
    """The folder and the names CocoPanopticMetric writes for ``outfile_prefix=prefix``: the
    PNG folder (which gets the record), the predictions JSON, the ground truth JSON."""
    folder, name = osp.split(osp.abspath(prefix))
    return folder, [f'{name}.panoptic', f'{name}.panoptic.json', f'{name}.gt.json']


def _set_panoptic_outfile_prefix(cfg, prefix: str, force: bool) -> None:
    """Point the PQ evaluators at ``prefix`` once the files there may be (re)written."""
    evaluators = _panoptic_evaluators(cfg, '--panoptic-out')
    folder, targets = _panoptic_out_targets(prefix)
    existing = check_targets(folder, [targets], PANOPTIC_PREDICTIONS, force)
    if existing and int(os.environ.get('RANK', '0')) == 0:
        remove_targets(folder, existing)
    elif existing:  # the other ranks write their PNGs only after rank 0 removed the old ones
        deadline = time.monotonic() + 300
        while any(osp.lexists(osp.join(folder, t)) for t in existing):
            if time.monotonic() > deadline:
                raise TimeoutError(f'rank 0 did not remove the earlier --panoptic-out files '
                                   f'{", ".join(existing)} in {folder} within 300 s')
            time.sleep(0.5)
    for evaluator in evaluators:
        evaluator['outfile_prefix'] = prefix
    os.makedirs(folder, exist_ok=True)


def _record_panoptic_out(prefix: str) -> None:
    """Record what the run wrote at ``prefix`` (so that --force may replace only that)."""
    folder, (png_dir, *jsons) = _panoptic_out_targets(prefix)
    if not osp.isdir(osp.join(folder, png_dir)):
        return
    write_record(osp.join(folder, png_dir), PANOPTIC_PREDICTIONS,
                 [n for n in jsons if osp.isfile(osp.join(folder, n))])


def _set_panoptic_classwise(cfg) -> None:
    """``--per-class``: ``classwise=True`` on every panoptic evaluator.

    mmdet's CocoPanopticMetric only prints its class table; FastCocoPanopticMetric
    (backend 'mmdet', the same computation) also returns the numbers, so the
    former is replaced by the latter.
    """
    for evaluator in _panoptic_evaluators(cfg, '--per-class'):
        scope = str(evaluator.get('type')).rpartition('.')[0]
        evaluator['type'] = (scope + '.' if scope else '') + 'FastCocoPanopticMetric'
        evaluator['classwise'] = True


def _is_memory_hook(hook) -> bool:
    return str(hook.get('type')).rpartition('.')[2] == 'MemoryHook'


def _swap_memory(cfg, root: str, config: str) -> None:
    """``--memory``: the run reads ``root`` (``memory.root``), marked as a deliberate swap."""
    from mmengine.logging import print_log

    from mmmaps.memory.memory_root import read_root_manifest
    hooks = [h for h in (cfg.get('custom_hooks') or []) if _is_memory_hook(h)]
    if 'memory' not in cfg or not hooks:
        model_type = (cfg.get('model') or {}).get('type')
        missing = ' and '.join(m for m, ok in (('a `memory` section', 'memory' in cfg),
                                              ('custom_hooks=[dict(type="MemoryHook")]', hooks))
                               if not ok)
        raise ValueError(f'--memory needs a MAPS config; {config} (model type {model_type}) '
                         f'lacks {missing}')
    root = osp.abspath(root)
    manifest = read_root_manifest(root)  # fails early, naming the problem
    if not manifest['banks'].get('scene'):
        raise ValueError(f'--memory {root} holds only a query-embedding cache, no memory banks')
    previous = cfg.memory.get('root')
    cfg.memory.root = root
    for hook in hooks:
        hook['memory_swap'] = True
    print_log(f'--memory: {root} replaces the configured memory {previous}', logger='current')


def main(argv=None):
    args = parse_args(argv)
    onnx = args.backend == 'onnxruntime'
    if onnx and not osp.isdir(args.checkpoint):
        raise FileNotFoundError(f'--backend onnxruntime: export folder {args.checkpoint!r} '
                                'does not exist (tools/deployment/export_onnx.py writes one)')
    if not onnx and not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    cfg = load_tool_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    from mmmaps.datasets.preflight import check_class_counts
    check_class_counts(cfg, 'test')
    if onnx:
        from mmmaps.deployment import onnx_model_config
        cfg.model = onnx_model_config(cfg, args.checkpoint, args.ort_threads)
        cfg.load_from = None
        # nothing to synchronise: DistributedDataParallel refuses a model without trainable
        # parameters; this wrapper leaves such a model as it is
        cfg.model_wrapper_cfg = dict(type='MMSeparateDistributedDataParallel')
    else:
        cfg.load_from = args.checkpoint
    if args.memory:
        _swap_memory(cfg, args.memory, args.config)
    if args.allow_incompatible_memory:
        hooks = [h for h in (cfg.get('custom_hooks') or []) if _is_memory_hook(h)]
        if not hooks:
            raise ValueError(f'--allow-incompatible-memory needs a MAPS config; {args.config} '
                             'has no MemoryHook in custom_hooks')
        for hook in hooks:
            hook['allow_incompatible_memory'] = True
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
    if args.panoptic_out:
        _set_panoptic_outfile_prefix(cfg, args.panoptic_out, args.force)
    if args.per_class:
        _set_panoptic_classwise(cfg)

    from mmmaps.engine import MMMapsRunner  # checkpoints must fit the model
    runner = MMMapsRunner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must be a .pkl file, got {args.out!r}')
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))

    metrics = runner.test()

    if is_main_process():
        if args.panoptic_out:
            _record_panoptic_out(args.panoptic_out)
        summary = panoptic_summary(metrics)
        if any(v is not None for v in summary.values()):
            print(format_summary_table({osp.splitext(osp.basename(args.config))[0]: summary}))
        os.makedirs(cfg.work_dir, exist_ok=True)
        out_json = osp.join(cfg.work_dir, 'metrics.json')
        tmp = out_json + '.tmp'
        with open(tmp, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f, indent=2)
        os.replace(tmp, out_json)
        print(f'metrics written to {out_json}')
    return metrics


if __name__ == '__main__':
    try:
        main()
    except tool_errors() as exc:
        sys.exit(f'test.py: error: {exc}')
