"""Multi-scale deformable attention alone, as ONNX graphs in onnxruntime vs mmcv in PyTorch.

    python benchmarks/deformable_attention_onnx.py [--threads 1 2] [--iters 7] \
        [--out benchmarks/results/deformable_attention_onnx.json]

The op of Mask2Former's / MAPS's pixel decoder (R50: 3 levels at strides 8/16/32, 8 heads,
32 dims per head, 4 points, every pixel a query) at 384x384 and 800x1333, batch 1, random
inputs. Arms, interleaved iteration by iteration on the same inputs (median time):

- ``pytorch``: mmcv's ``multi_scale_deformable_attn_pytorch`` (``F.grid_sample``), what
  the models run on the CPU;
- ``ort_gridsample``: that function exported (one ONNX GridSample per level), what
  ``tools/deployment/export_onnx.py`` exports today;
- ``ort_gather``: :func:`mmmaps.deployment.deformable_attention.multi_scale_deformable_attn_gather`
  exported (one Gather over a table of neighbouring key pairs and a MatMul, no GridSample).

Each arm's max |difference| to the PyTorch output is reported with its time.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import json
import os.path as osp
import platform
import tempfile
import time

import numpy as np
import torch

SIZES = {'384x384': (384, 384), '800x1333': (800, 1333)}
STRIDES = (8, 16, 32)
HEADS, DIMS, POINTS = 8, 32, 4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--iters', type=int, default=7)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--sizes', nargs='+', default=list(SIZES), choices=list(SIZES))
    parser.add_argument('--out', default=None, help='JSON with every timing')
    return parser.parse_args(argv)


def make_inputs(height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[-(-height // s), -(-width // s)] for s in STRIDES])
    keys = int(shapes.prod(1).sum())
    value = torch.randn(1, keys, HEADS, DIMS, generator=generator)
    locations = torch.rand(1, keys, HEADS, len(STRIDES), POINTS, 2, generator=generator)
    weights = torch.softmax(torch.randn(1, keys, HEADS, len(STRIDES) * POINTS,
                                        generator=generator), -1).view(
        1, keys, HEADS, len(STRIDES), POINTS)
    return shapes, (value, locations, weights)


def export(function, shapes, args, path):
    class Attention(torch.nn.Module):
        def forward(self, value, locations, weights):
            return function(value, shapes, locations, weights)

    torch.onnx.export(Attention(), args, path, opset_version=17,
                      input_names=['value', 'locations', 'weights'], output_names=['out'],
                      dynamo=False)


def main(argv=None):
    args = parse_args(argv)
    import onnxruntime as ort
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

    from mmmaps.deployment.deformable_attention import multi_scale_deformable_attn_gather
    results = dict(machine=dict(python=platform.python_version(), torch=torch.__version__,
                                onnxruntime=ort.__version__, cores=os.cpu_count()),
                   heads=HEADS, dims=DIMS, points=POINTS, strides=STRIDES, rows=[])
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            shapes, inputs = make_inputs(*SIZES[size])
            feeds = dict(value=inputs[0].numpy(), locations=inputs[1].numpy(),
                         weights=inputs[2].numpy())
            paths = {}
            for name, function in (('ort_gridsample', multi_scale_deformable_attn_pytorch),
                                   ('ort_gather', multi_scale_deformable_attn_gather)):
                paths[name] = osp.join(folder, f'{name}_{size}.onnx')
                export(function, shapes, inputs, paths[name])
            for threads in args.threads:
                torch.set_num_threads(threads)
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                sessions = {name: ort.InferenceSession(path, options,
                                                       providers=['CPUExecutionProvider'])
                            for name, path in paths.items()}
                arms = dict(pytorch=lambda: multi_scale_deformable_attn_pytorch(
                    inputs[0], shapes, *inputs[1:]).numpy(),
                    **{name: (lambda s=s: s.run(None, feeds)[0])
                       for name, s in sessions.items()})
                times = {name: [] for name in arms}
                outputs = {}
                with torch.no_grad():
                    for iteration in range(args.warmup + args.iters):
                        for name, run in arms.items():
                            start = time.perf_counter()
                            outputs[name] = run()
                            if iteration >= args.warmup:
                                times[name].append(time.perf_counter() - start)
                row = dict(size=size, threads=threads, keys=int(shapes.prod(1).sum()),
                           times=times)
                for name in arms:
                    row[f'{name}_ms'] = 1000 * float(np.median(times[name]))
                    row[f'{name}_max_abs_diff'] = float(np.abs(outputs[name] -
                                                               outputs['pytorch']).max())
                results['rows'].append(row)
                print(f'{size} {threads} thread(s), {row["keys"]} queries: ' + ', '.join(
                    f'{name} {row[name + "_ms"]:.1f} ms (diff {row[name + "_max_abs_diff"]:.1e})'
                    for name in arms) +
                    f'; gather / gridsample {row["ort_gridsample_ms"] / row["ort_gather_ms"]:.2f}x'
                    f', gather vs pytorch {row["pytorch_ms"] / row["ort_gather_ms"]:.2f}x')
    if args.out:
        tmp = args.out + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.out)
    return results


if __name__ == '__main__':
    main()
