"""onnxruntime vs PyTorch on the CPU: the exported networks of Mask2Former, MAPS and
Panoptic SegFormer (tiny r18 synthetic configs and the R50 COCO configs).

    python benchmarks/onnx_speed.py [--threads 1] [--tiny-size 128] [--r50-size 384 | H W]
        [--deformable-attention gather grid_sample] [--iters 5] [--warmup 1] [--families mask2former maps panoptic_segformer]
        [--sizes tiny r50] [--scene-slots 5] [--object-slots 80] [--padded-objects 20]
        [--out results.json]

For every (family, size) the config's model is built with random weights (``init_weights``
without the backbone's pretrained ``init_cfg``; the speed does not depend on the weights),
saved as a checkpoint and exported with :func:`mmmaps.deployment.export_onnx` at a fixed
``S`` x ``S`` (or H x W) input into a temporary folder, once for each
``--deformable-attention`` kind (Gather ops, or mmcv's GridSample path). Then the same graph module
(:class:`~mmmaps.deployment.Mask2FormerGraph` / :class:`~mmmaps.deployment.PanopticSegFormerGraph`,
eval mode, ``torch.no_grad()``) and the exported ``model.onnx`` (onnxruntime CPU session)
run on the same fixed inputs (batch 1), interleaved (PyTorch, each export, PyTorch, ...)
so that drift in the machine's speed hits both alike. MAPS runs the network with its memory
inputs (``--scene-slots`` scene slots, ``--object-slots`` object slots of which the last
``--padded-objects`` are padding), not the retrieval nor the key encoder. ``--threads N``
sets both ``torch.set_num_threads(N)`` and onnxruntime's ``intra_op_num_threads`` to N.

Prints a markdown table (median images/s of each backend, onnxruntime / PyTorch, max
|PyTorch - onnxruntime| over the outputs) and writes it with the settings to ``--out``
(JSON, written atomically).

With random weights, ``export_onnx``'s own check at its default tolerance (1e-3) can fail
(R50 MAPS at 384 x 384, all object slots padded: 0.018): Mask2Former's masked attention
thresholds the previous layer's mask logits at 0 (sigmoid 0.5), and an untrained model has
many logits near 0, so 1e-6 differences flip attention-mask bits. The benchmark passes
``--export-tolerance`` (default 0.05) and reports the difference on its own inputs.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import datetime
import functools
import json
import logging
import os
import os.path as osp
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
from mmengine.config import Config  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402

from mmmaps.deployment import (Mask2FormerGraph, PanopticSegFormerGraph,  # noqa: E402
                               export_onnx)
from mmmaps.deployment.deformable_attention import DEFORMABLE_ATTENTION_KINDS  # noqa: E402
from mmmaps.deployment.export import (build_model_from_config,  # noqa: E402
                                      max_abs_difference)
from mmmaps.deployment.graphs import memory_example  # noqa: E402
from benchmarks.timing import interleaved_seconds  # noqa: E402

CONFIGS = dict(
    tiny=dict(
        mask2former='configs/mask2former/mask2former_r18_synthetic-panoptic.py',
        maps='configs/maps/maps_r18_synthetic-panoptic.py',
        panoptic_segformer='configs/panoptic_segformer/panoptic-segformer_r18_synthetic.py'),
    r50=dict(
        mask2former='configs/mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py',
        maps='configs/maps/maps_r50_8xb2-lsj-50e_coco-panoptic.py',
        panoptic_segformer='configs/panoptic_segformer/'
        'panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'))
FAMILIES = ('mask2former', 'maps', 'panoptic_segformer')
RUNNABLE_KINDS = tuple(k for k in DEFORMABLE_ATTENTION_KINDS if k != 'mmdeploy')


def cfg_options(cfg) -> dict:
    """Random weights, offline: no torchvision backbone download, no CLIP weights file
    (the MAPS key encoder is exported too; ``pretrained=None`` = random init from its seed)."""
    options = {}
    if cfg.model.get('backbone', {}).get('init_cfg') is not None:
        options['model.backbone.init_cfg'] = None
    memory = cfg.get('memory') or {}
    for name in ('key_encoder', 'dense_encoder'):
        if (memory.get(name) or {}).get('pretrained') is not None:
            options[f'memory.{name}.pretrained'] = None
    return options


def ort_session(path: str, threads: int):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def graph_inputs(graph, shape, args) -> list:
    """Fixed inputs (seeded) in ``graph.input_names`` order, batch 1."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, *shape, generator=generator)
    if isinstance(graph, PanopticSegFormerGraph):
        return [image, torch.tensor([list(shape)], dtype=torch.int64)]
    if not graph.is_maps:
        return [image]
    memory = memory_example(graph, 1, args.scene_slots, args.object_slots, generator)
    if graph.reads_objects:
        mask = torch.zeros(1, args.object_slots, dtype=torch.bool)
        if args.padded_objects:
            mask[:, -args.padded_objects:] = True
        memory[graph.input_names.index('object_mask') - 1] = mask
    return [image, *memory]


def bench_one(family: str, tier: str, shape, args, tmp: str) -> dict:
    config = osp.join(REPO, CONFIGS[tier][family])
    cfg = Config.fromfile(config)
    options = cfg_options(cfg)
    cfg.merge_from_dict(options)
    torch.manual_seed(0)
    model = build_model_from_config(cfg)
    model.init_weights()
    model.eval()
    folder = osp.join(tmp, f'{family}_{tier}')
    os.makedirs(folder)
    checkpoint = osp.join(folder, 'init.pth')
    torch.save(dict(state_dict=model.state_dict(), meta={}), checkpoint)
    export_s, sessions = {}, {}
    for kind in args.deformable_attention:
        start = time.perf_counter()
        info = export_onnx(config, checkpoint, osp.join(folder, kind), shape=tuple(shape),
                           cfg_options=options, tolerance=args.export_tolerance,
                           deformable_attention=kind,
                           log=lambda msg: print(f'  {msg}', flush=True))
        export_s[kind] = round(time.perf_counter() - start, 2)
        sessions[kind] = ort_session(osp.join(folder, kind, 'model.onnx'), args.threads)
    os.remove(checkpoint)

    if family == 'panoptic_segformer':
        graph = PanopticSegFormerGraph(model, with_stuff=model._with_stuff).eval()
    else:
        graph = Mask2FormerGraph(model).eval()
    inputs = graph_inputs(graph, shape, args)
    feed = {name: tensor.numpy() for name, tensor in zip(graph.input_names, inputs)}
    output_names = [o['name'] for o in info['outputs']]

    def run_torch():
        with torch.no_grad():
            return graph(*inputs)

    runs = [run_torch] + [functools.partial(session.run, output_names, feed)
                          for session in sessions.values()]
    reference = run_torch()
    times = interleaved_seconds(runs, args.iters, args.warmup)
    m_torch = statistics.median(times[0])
    row = dict(family=family, size=tier, config=CONFIGS[tier][family], shape=list(shape),
               cfg_options=options, export_seconds=export_s,
               inputs={n: list(a.shape) for n, a in feed.items()},
               torch_seconds=times[0], torch_median_ms=1000 * m_torch,
               torch_images_per_s=1 / m_torch, ort={})
    for (kind, session), seconds in zip(sessions.items(), times[1:]):
        median = statistics.median(seconds)
        row['ort'][kind] = dict(
            seconds=seconds, median_ms=1000 * median, images_per_s=1 / median,
            over_torch=m_torch / median,
            max_abs_difference={name: max_abs_difference(ref, out, name) for name, ref, out
                                in zip(output_names, reference, session.run(output_names,
                                                                            feed))})
    print(f'  PyTorch {1 / m_torch:.3f} img/s; ' + '; '.join(
        f'onnxruntime ({kind}) {r["images_per_s"]:.3f} img/s (x{r["over_torch"]:.2f}, max '
        f'|diff| {max(r["max_abs_difference"].values()):.1e})' for kind, r in row['ort'].items()),
        flush=True)
    return row


def markdown(rows) -> str:
    kinds = list(rows[0]['ort']) if rows else []
    lines = ['| family | config | input | PyTorch img/s | ' + ' | '.join(
        f'ORT {kind} img/s | ORT {kind} / PyTorch | {kind} max abs diff' for kind in kinds)
        + ' |', '|---|---|---|---:|' + '---:|---:|---:|' * len(kinds)]
    for r in rows:
        lines.append(f'| {r["family"]} | {osp.basename(r["config"])} | '
                     f'{r["shape"][0]}x{r["shape"][1]} | {r["torch_images_per_s"]:.3f} | '
                     + ' | '.join(f'{o["images_per_s"]:.3f} | {o["over_torch"]:.2f} | '
                                  f'{max(o["max_abs_difference"].values()):.1e}'
                                  for o in r['ort'].values()) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--families', nargs='+', choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument('--sizes', nargs='+', choices=('tiny', 'r50'), default=['tiny', 'r50'])
    parser.add_argument('--tiny-size', type=int, default=128)
    parser.add_argument('--r50-size', type=int, nargs='+', default=[384], metavar='S',
                        help='R50 input: S (square) or H W (e.g. 800 1344, a multiple of 32)')
    parser.add_argument('--deformable-attention', nargs='+', choices=RUNNABLE_KINDS,
                        default=list(RUNNABLE_KINDS),
                        help='export each of these and time them side by side (not mmdeploy: '
                        'onnxruntime has no kernel for its op)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch.set_num_threads and onnxruntime intra_op_num_threads')
    parser.add_argument('--iters', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--scene-slots', type=int, default=5, help='MAPS: k retrieved scenes')
    parser.add_argument('--object-slots', type=int, default=80, help='MAPS: object slots')
    parser.add_argument('--padded-objects', type=int, default=20,
                        help='MAPS: how many of the object slots are padding (masked)')
    parser.add_argument('--export-tolerance', type=float, default=0.05,
                        help='max |PyTorch - onnxruntime| export_onnx accepts on its own '
                        'verification inputs (its default 1e-3 can fail on random weights, '
                        'see the module docstring)')
    parser.add_argument('--out', help='write the results as JSON')
    args = parser.parse_args(argv)
    if args.iters < 1 or args.threads < 1 or not 0 <= args.padded_objects < args.object_slots:
        parser.error('--iters and --threads must be >= 1, 0 <= --padded-objects < '
                     '--object-slots')
    torch.set_num_threads(args.threads)
    MMLogger.get_instance('mmengine').setLevel(logging.WARNING)  # init_weights' report
    logging.getLogger().setLevel(logging.ERROR)  # open_clip: 'no pretrained weights loaded'
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tier in args.sizes:
            shape = ((args.tiny_size, ) * 2 if tier == 'tiny' else
                     tuple(args.r50_size) * (2 if len(args.r50_size) == 1 else 1))
            for family in args.families:
                print(f'{family} {tier} at {shape[0]}x{shape[1]}:', flush=True)
                rows.append(bench_one(family, tier, shape, args, tmp))
    import onnxruntime
    table = markdown(rows)
    print(f'\nbatch 1, {args.iters} iterations (median) after {args.warmup} warm-up, '
          f'{args.threads} thread(s) for both backends, CPU ({os.cpu_count()} cores); '
          f'torch {torch.__version__}, onnxruntime {onnxruntime.__version__}\n')
    print(table)
    if args.out:
        result = dict(
            command='python benchmarks/onnx_speed.py ' + ' '.join(
                sys.argv[1:] if argv is None else argv),
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            machine=dict(cpu_count=os.cpu_count(), processor=platform.processor(),
                         platform=platform.platform()),
            versions=dict(torch=torch.__version__, onnxruntime=onnxruntime.__version__,
                          numpy=np.__version__, python=platform.python_version()),
            settings=dict(vars(args), batch=1), wall_seconds=time.perf_counter() - started,
            rows=rows, table=table)
        out = osp.abspath(args.out)
        os.makedirs(osp.dirname(out), exist_ok=True)
        with open(out + '.tmp', 'w') as f:
            json.dump(result, f, indent=1)
        os.replace(out + '.tmp', out)
        print(f'\nwrote {out}')


if __name__ == '__main__':
    main()
