"""GPU acceptance: the checks and measurements of one GPU machine, as one report.

    python tools/gpu_acceptance.py --out DIR [--dry-run] [--work DIR] [--only SECTION ...]

Run through ``tools/gpu_acceptance.sh`` (which installs the offline wheel set first). Writes
``DIR/gpu_acceptance.json`` and ``DIR/gpu_acceptance.md`` after every section, so a run cut
short still reports what it finished. Sections (each one's failure is recorded with its
traceback and the others still run):

- ``environment``: versions, GPU, how mmcv was installed, whether mmcv has CUDA ops.
- ``msda``: mmcv's CUDA multi-scale deformable attention vs its PyTorch path (max abs
  difference of the output and of the three input gradients), float32 and bfloat16.
- ``memory_build``: synthetic 1024x1024 train images -> ``tools/build_memory.py`` with a
  random ViT-B/16 (TiledCLIP objects, CLS keys) on the GPU: images/s; plus the val query
  cache (``--split val --query-cache-only``).
- ``models``: Mask2Former R50, MAPS R50 (that memory), Panoptic SegFormer R50 (the paper
  configs, random init): one AMP bf16 training step at 1024x1024 batch 2 (median of a few,
  peak GPU memory), inference images/s at 800x1333 batch 1 (float32), and MAPS/Mask2Former
  ratios with the query keys from the caches and with the CLIP key encoder on the fly.
- ``retrieval``: 100k keys, HNSW (CPU, the project's default index) ms/query and recall@5
  against exact search; faiss-gpu Flat when faiss has GPU support (said either way).
- ``deployment``: each family (random init) exported with ``export_onnx`` (Gather deformable
  attention) at 800x1344, then the same network in onnxruntime (every execution provider the
  installed build has), in PyTorch on the GPU (fp32) and in PyTorch on the CPU with as many
  threads: ms/image and max |difference|. Needs onnx (torch's exporter imports it) and
  onnxruntime; the GPU machine's image holds both (onnx 1.23.1, onnxruntime 1.30.0, a CPU
  build), so the wheel set does not carry them; skipped, and said so, where they are absent.
  onnxruntime's CUDA provider is not measured there: PyPI's onnxruntime-gpu 1.31 is a CUDA 13
  build but a 243 MiB wheel, far over the 64 MiB a device call carries.
- ``ddp``: a 2-process DDP training step through tools/dist_train.sh when 2+ GPUs are
  visible (skipped, and said so, otherwise).

``--dry-run`` runs the same code on the CPU at tiny sizes (tiny configs, 64-128 px images,
2k keys, bf16 autocast on the CPU, no CUDA kernel comparison) so the test suite keeps the
script working between the sessions that have a GPU.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import contextlib
import copy
import itertools
import json
import os
import os.path as osp
import platform
import statistics
import subprocess
import sys
import time
import traceback
from types import SimpleNamespace

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SECTIONS = ('environment', 'msda', 'memory_build', 'models', 'retrieval', 'deployment',
            'ddp')

# Paper-size runs on the GPU; tiny ones for --dry-run. Every number the report states comes
# from these two tables.
SIZES = dict(
    real=dict(train_images=200, train_size=(1024, 1024), val_images=12, val_size=(800, 1333),
              batch=2, warmup=2, steps=3, infer_images=10, keys=100_000, key_dim=512,
              queries=1000, configs=dict(
                  mask2former='configs/mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py',
                  maps='configs/maps/maps_r50_8xb2-lsj-50e_coco-panoptic.py',
                  panoptic_segformer='configs/panoptic_segformer/'
                  'panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'),
              msda=dict(batch=2, heads=8, head_dim=32, levels=((128, 128), (64, 64), (32, 32)),
                        points=4),
              deploy=dict(shape=(800, 1344), warmup=1, reps=3, object_slots=80)),
    dry=dict(train_images=6, train_size=(128, 128), val_images=3, val_size=(96, 160),
             batch=2, warmup=1, steps=1, infer_images=2, keys=2000, key_dim=64, queries=50,
             configs=dict(
                 mask2former='configs/mask2former/mask2former_r18_synthetic-panoptic.py',
                 maps='configs/maps/maps_r18_synthetic-panoptic.py',
                 panoptic_segformer='configs/panoptic_segformer/panoptic-segformer_r18_synthetic.py'),
             msda=dict(batch=1, heads=2, head_dim=8, levels=((8, 8), (4, 4)), points=2),
             deploy=dict(shape=(96, 160), warmup=0, reps=1, object_slots=8)),
)
# anchors the report puts next to the measurements
ANCHORS = {
    'mask2former': 'mmdet model zoo, Mask2Former R50 COCO panoptic: 8.6 fps (V100, fp32), '
                   '13.9 GB training memory (batch 2/GPU, 1024 LSJ)',
    'panoptic_segformer': 'Panoptic SegFormer paper: R50 7.8 FPS (V100), <12 GB training',
    'maps': 'MAPS paper: memory adds little overhead over Mask2Former',
}


# --------------------------------------------------------------------------- report
class Report:
    """The JSON + markdown report, rewritten after every section."""

    def __init__(self, out: str, dry_run: bool):
        os.makedirs(out, exist_ok=True)
        self.out = out
        self.data = dict(dry_run=dry_run, started=time.strftime('%Y-%m-%d %H:%M:%S'),
                         sections={})

    def run(self, name: str, fn, *args):
        start = time.perf_counter()
        print(f'==> [{time.strftime("%H:%M:%S")}] {name}', flush=True)
        try:
            result = fn(*args)
            entry = dict(status='skipped' if isinstance(result, str) else 'ok',
                         result=result)
        except SectionFailed as exc:  # a failure next to what was measured all the same
            entry = dict(status='failed', error=str(exc), result=exc.result)
            print(entry['error'], file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 -- recorded in the report, the next section runs
            entry = dict(status='failed', error=traceback.format_exc()[-6000:])
            print(entry['error'], file=sys.stderr, flush=True)
        entry['seconds'] = round(time.perf_counter() - start, 1)
        self.data['sections'][name] = entry
        self.save()
        print(f'    {entry["status"]} in {entry["seconds"]} s', flush=True)
        return entry

    def save(self) -> None:
        for name, text in (('gpu_acceptance.json', json.dumps(self.data, indent=2, default=str)),
                           ('gpu_acceptance.md', self.markdown())):
            path = osp.join(self.out, name)
            with open(path + '.tmp', 'w') as f:
                f.write(text)
            os.replace(path + '.tmp', path)

    def markdown(self) -> str:
        lines = [f'# GPU acceptance{" (dry run, CPU)" if self.data["dry_run"] else ""}',
                 '', f'Started {self.data["started"]}.', '']
        for name, entry in self.data['sections'].items():
            lines += [f'## {name}: {entry["status"]} ({entry["seconds"]} s)', '']
            if entry['status'] == 'failed':
                lines += ['```', entry['error'].strip()[-3000:], '```', '']
                if entry.get('result') is not None:
                    lines += _markdown_of(entry['result']) + ['']
            elif entry['status'] == 'skipped':
                lines += [entry['result'], '']
            else:
                lines += _markdown_of(entry['result']) + ['']
        return '\n'.join(lines)


def _markdown_of(result) -> list:
    if isinstance(result, dict) and 'rows' in result:
        rows = [r for r in result['rows'] if 'error' not in r]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        out = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)] if rows else []
        out += ['| ' + ' | '.join(str(r.get(k, '')) for k in keys) + ' |' for r in rows]
        for r in result['rows']:  # a failed row's traceback below the table
            if 'error' in r:
                out += ['', f'{r.get("model", "row")} failed:', '```', r['error'].strip(),
                        '```']
        notes = {k: v for k, v in result.items() if k != 'rows'}
        return out + [''] + [f'- {k}: {v}' for k, v in notes.items()]
    if isinstance(result, dict):
        return [f'- {k}: {v}' for k, v in result.items()]
    return [str(result)]


class SectionFailed(Exception):
    """A section that failed in part: ``result`` holds what it measured all the same."""

    def __init__(self, message: str, result):
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------- helpers
def _device() -> torch.device:
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, warmup: int, reps: int) -> list:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return times


def _autocast_bf16():
    """bf16 autocast on the device the run uses (CPU in the dry run)."""
    return torch.autocast(device_type=_device().type, dtype=torch.bfloat16)


def _gib(num_bytes: int) -> float:
    return round(num_bytes / 2**30, 2)


# --------------------------------------------------------------------------- environment
def environment(ctx) -> dict:
    import mmcv
    import mmdet
    import mmengine
    info = dict(python=platform.python_version(), torch=torch.__version__,
                torch_cuda=torch.version.cuda, numpy=np.__version__, mmcv=mmcv.__version__,
                mmengine=mmengine.__version__, mmdet=mmdet.__version__,
                cpu_threads=torch.get_num_threads(),
                mmcv_install=os.environ.get('MMMAPS_MMCV_INSTALL', 'the environment\'s'))
    try:
        import faiss
        info['faiss'] = f'{faiss.__version__} ({faiss.get_num_gpus()} GPUs visible to faiss)'
    except ImportError as err:
        info['faiss'] = f'not importable: {err}'
    from mmcv.utils import ext_loader
    ext = ext_loader.load_ext('_ext', ['ms_deform_attn_forward'])
    info['mmcv_ext'] = osp.basename(ext.__file__)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                    capability=f'{props.major}.{props.minor}',
                    gpu_memory_gib=_gib(props.total_memory),
                    mmcv_cuda_ops=_mmcv_has_cuda_ops())
    return info


def _mmcv_has_cuda_ops() -> bool:
    from mmcv.ops import get_compiler_version, get_compiling_cuda_version
    return get_compiling_cuda_version() not in ('not available', '') and bool(
        get_compiler_version())


# --------------------------------------------------------------------------- msda
def msda(ctx) -> dict:
    """CUDA kernel vs PyTorch path of mmcv's multi-scale deformable attention."""
    from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                                  multi_scale_deformable_attn_pytorch)
    size = ctx.sizes['msda']
    device = _device()
    gen = torch.Generator().manual_seed(0)
    shapes = torch.tensor(size['levels'], dtype=torch.long)
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    num_keys = int((shapes[:, 0] * shapes[:, 1]).sum())
    num_queries = num_keys
    b, h, d, lv, p = (size['batch'], size['heads'], size['head_dim'], len(size['levels']),
                      size['points'])
    value = torch.rand(b, num_keys, h, d, generator=gen)
    locations = torch.rand(b, num_queries, h, lv, p, 2, generator=gen)
    weights = torch.rand(b, num_queries, h, lv, p, generator=gen) + 1e-5
    weights = weights / weights.sum((-2, -1), keepdim=True)
    grad_out = torch.rand(b, num_queries, h * d, generator=gen)

    def run(impl, dtype, autocast=False):
        cast = torch.float32 if autocast else dtype
        inputs = [t.to(device, cast).requires_grad_() for t in (value, locations, weights)]
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            if impl == 'pytorch':
                out = multi_scale_deformable_attn_pytorch(inputs[0], shapes.to(device),
                                                          inputs[1], inputs[2])
            else:
                out = MultiScaleDeformableAttnFunction.apply(
                    inputs[0], shapes.to(device), starts.to(device), inputs[1], inputs[2], 64)
        out.backward(grad_out.to(device, out.dtype))
        return [out.detach().float().cpu()] + [t.grad.float().cpu() for t in inputs]

    reference = run('pytorch', torch.float32)
    names = ('output', 'grad_value', 'grad_locations', 'grad_weights')
    rows = []
    if device.type == 'cuda':
        # the kernel on bf16 inputs is what bf16 autocast feeds it (value_proj's output)
        candidates = [('cuda', torch.float32, False), ('cuda', torch.bfloat16, False),
                      ('pytorch', torch.bfloat16, False)]
    else:  # the CPU's grid_sample has no bf16 kernel; autocast runs it in float32
        candidates = [('pytorch', torch.bfloat16, True)]
    for impl, dtype, autocast in candidates:
        label = dict(impl=impl, dtype=str(dtype).split('.')[-1] + (' autocast' if autocast
                                                                   else ''))
        try:
            got = run(impl, dtype, autocast)
        except RuntimeError as err:  # e.g. a kernel not built for this dtype
            rows.append(dict(label, error=str(err).splitlines()[0]))
            continue
        row = dict(label)
        for name, ref, val in zip(names, reference, got):
            scale = float(ref.abs().max()) or 1.0
            row[f'{name} max abs diff'] = f'{float((val - ref).abs().max()):.2e}'
            row[f'{name} rel'] = f'{float((val - ref).abs().max()) / scale:.2e}'
        fn = (lambda impl=impl, dtype=dtype, autocast=autocast: run(impl, dtype, autocast))
        row['ms fwd+bwd'] = round(1000 * statistics.median(_timed(fn, 1, 3)), 2)
        rows.append(row)
    result = dict(rows=rows, reference='PyTorch path (grid_sample) in float32 on the same '
                  'device', shape=f'batch {b}, {num_queries} queries, {h} heads x {d}, '
                  f'levels {size["levels"]}, {p} points')
    if device.type != 'cuda':
        result['cuda'] = 'no CUDA device: the kernel comparison needs the GPU machine'
    return result


# --------------------------------------------------------------------------- data + memory
def _synthetic_metainfo() -> dict:
    from mmmaps.datasets.synthetic_panoptic import SYNTHETIC_METAINFO
    return SYNTHETIC_METAINFO


def make_data(ctx) -> None:
    from mmmaps.datasets import generate_synthetic_panoptic
    sizes = ctx.sizes
    ctx.train_root = osp.join(ctx.work, f'train_{sizes["train_size"][0]}')
    ctx.val_root = osp.join(ctx.work, f'val_{sizes["val_size"][0]}x{sizes["val_size"][1]}')
    start = time.perf_counter()
    generate_synthetic_panoptic(ctx.train_root, num_train=sizes['train_images'], num_val=1,
                                seed=0, size=sizes['train_size'], progress=False)
    generate_synthetic_panoptic(ctx.val_root, num_train=1, num_val=sizes['val_images'],
                                seed=1, size=sizes['val_size'], progress=False)
    ctx.data_seconds = round(time.perf_counter() - start, 1)


def _dataset_cfg(root: str, split: str, test_mode: bool) -> dict:
    pipeline = [dict(type='LoadImageFromFile', to_float32=not test_mode)]
    if not test_mode:
        pipeline.append(dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True,
                             with_seg=True))
    pipeline.append(dict(type='PackDetInputs') if not test_mode else dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')))
    return dict(type='CocoPanopticDataset', data_root=root + '/',
                metainfo=_synthetic_metainfo(), ann_file=f'annotations/panoptic_{split}.json',
                data_prefix=dict(img=f'{split}/', seg=f'annotations/panoptic_{split}/'),
                filter_cfg=dict(filter_empty_gt=False), test_mode=test_mode, pipeline=pipeline)


def write_config(ctx, family: str) -> str:
    """The paper (or tiny) config of ``family`` on the synthetic data, random init, as a
    config file the tools read."""
    base = osp.join(REPO, ctx.sizes['configs'][family])
    model = dict(backbone=dict(init_cfg=None))
    lines = [f'_base_ = {base!r}',
             f'train_dataloader = dict(dataset={_dataset_cfg(ctx.train_root, "train", False)!r})',
             f'val_dataloader = dict(dataset={_dataset_cfg(ctx.val_root, "val", True)!r})',
             'test_dataloader = val_dataloader']
    if family == 'maps':
        memory = dict(root=ctx.memory_root, key_encoder=dict(pretrained=None),
                      dense_encoder=dict(pretrained=None),
                      build=dict(num_workers=2 if ctx.dry_run else 8))
        lines.append(f'memory = {memory!r}')
    lines.append(f'model = {model!r}')
    path = osp.join(ctx.work, f'{family}.py')
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return path


def memory_build(ctx) -> dict:
    make_data(ctx)
    ctx.memory_root = osp.join(ctx.work, 'memory')
    config = write_config(ctx, 'maps')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [REPO, os.environ.get('PYTHONPATH')])))
    timings = {}
    for split, extra in (('train', []), ('val', ['--query-cache-only'])):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, osp.join(REPO, 'tools/build_memory.py'), config,
                               '--split', split, '--force', '--device', _device().type] + extra,
                              env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f'build_memory.py --split {split} failed:\n'
                               f'{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
        timings[split] = time.perf_counter() - start
    sizes = ctx.sizes
    from mmengine.config import Config
    memory = Config.fromfile(config).memory
    return dict(
        images=f'{sizes["train_images"]} train {sizes["train_size"][0]}x{sizes["train_size"][1]}'
        f', {sizes["val_images"]} val {sizes["val_size"][0]}x{sizes["val_size"][1]} '
        f'(generated in {ctx.data_seconds} s)',
        key_encoder=f'{memory.key_encoder.type} {memory.key_encoder.arch} (random init)',
        dense_encoder=f'{memory.dense_encoder.type} {memory.dense_encoder.arch} (random init)',
        build_seconds=round(timings['train'], 1),
        images_per_second=round(sizes['train_images'] / timings['train'], 2),
        note='end to end tools/build_memory.py (process start, reading, both encoders, index, '
             'manifest)',
        val_query_cache_seconds=round(timings['val'], 1))


# --------------------------------------------------------------------------- models
def _remap_labels(samples, num_things_data: int, num_things_model: int) -> None:
    """Synthetic labels (things first, then stuff) into the model's label space: stuff label
    s becomes s - num_things_data + num_things_model (255 stays ignore)."""
    shift = num_things_model - num_things_data
    if shift == 0:
        return
    for sample in samples:
        labels = sample.gt_instances.labels
        sample.gt_instances.labels = torch.where(labels >= num_things_data, labels + shift,
                                                 labels)
        seg = sample.gt_sem_seg.sem_seg
        stuff = (seg >= num_things_data) & (seg != 255)
        sample.gt_sem_seg.sem_seg = torch.where(stuff, seg + shift, seg)


def _batches(cfg, ctx, num_things_model: int):
    from mmdet.registry import DATASETS
    from mmengine.dataset import pseudo_collate
    train = DATASETS.build(cfg.train_dataloader.dataset)
    val = DATASETS.build(cfg.val_dataloader.dataset)
    train_batch = pseudo_collate([train[i] for i in range(ctx.sizes['batch'])])
    _remap_labels(train_batch['data_samples'], len(_synthetic_metainfo()['thing_classes']),
                  num_things_model)
    val_batches = [pseudo_collate([val[i % len(val)]]) for i in range(ctx.sizes['infer_images'])]
    return train_batch, val_batches


def _num_things(cfg) -> int:
    return int(cfg.model.panoptic_fusion_head.num_things_classes)


def _optim_wrapper(model, cfg):
    from mmengine.optim import build_optim_wrapper
    optim = cfg.optim_wrapper.copy()
    if torch.cuda.is_available():
        optim.update(type='AmpOptimWrapper', dtype='bfloat16')
    else:
        optim.update(type='OptimWrapper')  # CPU: bf16 autocast around the step instead
    return build_optim_wrapper(model, optim)


def _train_step(model, optim_wrapper, batch):
    model.train()
    # AmpOptimWrapper autocasts itself on CUDA; on the CPU (dry run) the same step runs
    # under a CPU bf16 autocast
    cast = contextlib.nullcontext() if torch.cuda.is_available() else _autocast_bf16()
    with cast:
        model.train_step(batch, optim_wrapper)


def _test_step(model, batch):
    model.eval()
    with torch.no_grad():
        model.test_step(batch)


def _measure(model, optim_wrapper, train_batch, val_batches, sizes, device):
    """Median train-step and inference seconds, and the peak GPU memory of training."""
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    step = _timed(lambda: _train_step(model, optim_wrapper, train_batch), sizes['warmup'],
                  sizes['steps'])
    peak = _gib(torch.cuda.max_memory_allocated()) if device.type == 'cuda' else None
    batches = itertools.cycle(val_batches)
    infer = _timed(lambda: _test_step(model, next(batches)), 1, len(val_batches))
    return statistics.median(step), statistics.median(infer), peak


def models(ctx) -> dict:
    from mmdet.utils import register_all_modules
    if not getattr(ctx, 'memory_root', None):
        raise RuntimeError('the models section needs the memory_build section')
    register_all_modules()
    import logging
    logging.getLogger('mmengine').setLevel(logging.WARNING)  # not every parameter's lr
    device = _device()
    rows, times = [], {}
    for family in ('mask2former', 'maps', 'panoptic_segformer'):
        try:  # one family's failure is its row's, the others are still measured
            family_rows, family_times = _measure_family(ctx, family, device)
            rows += family_rows
            times.update(family_times)
        except Exception:  # noqa: BLE001 (reported in the row, the section fails below)
            rows.append({'model': family, 'error': traceback.format_exc(limit=-8)})
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    failed = [r['model'] for r in rows if 'error' in r]
    base = times.get('mask2former')
    ratios = {f'{name} / Mask2Former': dict(train=round(t[0] / base[0], 3),
                                           inference=round(t[1] / base[1], 3))
              for name, t in times.items() if name.startswith('maps') and base}
    result = dict(rows=rows, ratios=ratios, anchors=ANCHORS,
                  note='random init, synthetic images; COCO class counts (stuff labels of the '
                       'synthetic set mapped into the 80 thing / 53 stuff label space)'
                  if not ctx.dry_run else 'tiny configs, CPU')
    if failed:
        raise SectionFailed(f'{", ".join(failed)} failed (tracebacks in their rows)', result)
    return result


def _measure_family(ctx, family, device):
    """``family``'s report rows (MAPS: both training key sources) and {name: (train s,
    inference s)}."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmmaps.memory import build_external_memory
    sizes = ctx.sizes
    rows, times = [], {}
    cfg = Config.fromfile(write_config(ctx, family))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()  # as the Runner does: e.g. DETR's level embeddings start empty
    model = model.to(device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    train_batch, val_batches = _batches(cfg, ctx, _num_things(cfg))
    optim_wrapper = _optim_wrapper(model, cfg)
    # MAPS twice: training keys from the model's augmented input (the default, the
    # paper: the CLIP key encoder runs on every training crop; val keys of whole
    # pictures from the cache), and from the whole-image cache in training too
    variants = [('', None)] if family != 'maps' else [
        (', keys from the model input', 'model_input'),
        (', full-image cache', 'full_image_cache')]
    for suffix, key_source in variants:
        if key_source is not None:
            memory_cfg = copy.deepcopy(cfg.memory)
            memory_cfg.retrieval.query_keys = key_source
            model.attach_memory(build_external_memory(memory_cfg, device=device))
        name = family + suffix
        train_s, infer_s, peak = _measure(model, optim_wrapper, train_batch, val_batches,
                                          sizes, device)
        times[name] = (train_s, infer_s)
        rows.append({'model': name, 'params M': round(params, 2),
                     'train step s (bf16, batch %d, %dx%d)' % (
                         sizes['batch'], *sizes['train_size']): round(train_s, 3),
                     'peak train GiB': peak,
                     'inference img/s (fp32, %dx%d)' % sizes['val_size']:
                     round(1 / infer_s, 2)})
    return rows, times


# --------------------------------------------------------------------------- retrieval
def retrieval(ctx) -> dict:
    import faiss

    from mmmaps.memory.faiss_index import build_index, gpu_available
    sizes = ctx.sizes
    rng = np.random.default_rng(0)
    num, dim, k = sizes['keys'], sizes['key_dim'], 5
    centres = rng.standard_normal((max(num // 50, 10), dim)).astype(np.float32)
    keys = centres[rng.integers(0, len(centres), num)] + 0.4 * rng.standard_normal(
        (num, dim)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    queries = keys[rng.integers(0, num, sizes['queries'])] + 0.05 * rng.standard_normal(
        (sizes['queries'], dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    # exact top-k by a matrix product on the run's device: the recall reference
    device = _device()
    scores = torch.from_numpy(queries).to(device) @ torch.from_numpy(keys).to(device).T
    truth = scores.topk(k, dim=1).indices.cpu().numpy()
    rows = []

    def measure(name, index, build_s):
        per_query = _timed(lambda: [index.search(queries[i:i + 1], k)
                                    for i in range(len(queries))], 0, 1)[0] / len(queries)
        batched = _timed(lambda: index.search(queries, k), 1, 3)
        _, found = index.search(queries, k)
        recall = np.mean([len(set(a) & set(t)) / k for a, t in zip(found, truth)])
        rows.append({'index': name, 'build s': round(build_s, 1),
                     'ms/query (one at a time)': round(1000 * per_query, 3),
                     f'ms/query (batch {len(queries)})':
                     round(1000 * statistics.median(batched) / len(queries), 4),
                     'recall@5': round(float(recall), 4)})

    start = time.perf_counter()
    hnsw = build_index(dict(type='HNSW', M=32, ef_construction=200, ef_search=128), keys)
    measure(f'HNSW ef=128 (CPU, {faiss.omp_get_max_threads()} threads)', hnsw,
            time.perf_counter() - start)
    if gpu_available():
        start = time.perf_counter()
        resources = faiss.StandardGpuResources()
        flat = faiss.index_cpu_to_gpu(resources, 0, build_index(dict(type='Flat'), keys))
        measure('faiss-gpu Flat', flat, time.perf_counter() - start)
        gpu_note = 'faiss-gpu Flat measured'
    else:
        gpu_note = ('faiss has no GPU support here (faiss-cpu; faiss-gpu wheels are far over the '
                    '64 MiB offline wheel set), so no faiss-gpu row')
    return dict(rows=rows, keys=f'{num} x {dim} clustered unit vectors',
                queries=f'{len(queries)} perturbed keys', faiss_gpu=gpu_note,
                recall_reference=f'exact top-5 by matrix product on {device.type}')


# --------------------------------------------------------------------------- deployment
DEPLOY_TOLERANCE = 0.05  # random weights: the masked attention's 0-threshold flips on 1e-6


def _deploy_options(cfg) -> dict:
    """Random init offline: no backbone download, no CLIP weights file."""
    options = {'model.backbone.init_cfg': None}
    for name in ('key_encoder', 'dense_encoder'):
        if ((cfg.get('memory') or {}).get(name) or {}).get('pretrained') is not None:
            options[f'memory.{name}.pretrained'] = None
    return options


def deployment(ctx):
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as err:
        return (f'skipped: {err.name} is not installed here; torch\'s ONNX exporter needs onnx '
                'and the run needs onnxruntime (`bash tools/setup_env.sh --deploy`, or the GPU '
                'machine\'s image, which holds both)')
    from mmengine.config import Config

    from mmmaps.deployment import Mask2FormerGraph, PanopticSegFormerGraph, export_onnx
    from mmmaps.deployment.export import build_model_from_config, max_abs_difference
    from mmmaps.deployment.graphs import memory_example

    from benchmarks.timing import interleaved_seconds
    size = ctx.sizes['deploy']
    height, width = size['shape']
    threads = torch.get_num_threads()
    device = _device()
    providers = [p for p in ('CUDAExecutionProvider', 'CPUExecutionProvider')
                 if p in ort.get_available_providers()]
    rows = []
    for family, config in ctx.sizes['configs'].items():
        config = osp.join(REPO, config)
        cfg = Config.fromfile(config)
        options = _deploy_options(cfg)
        cfg.merge_from_dict(options)
        torch.manual_seed(0)
        model = build_model_from_config(cfg)
        model.init_weights()
        model.eval()
        folder = osp.join(ctx.work, 'deployment', family)
        os.makedirs(folder, exist_ok=True)
        checkpoint = osp.join(folder, 'init.pth')
        torch.save(dict(state_dict=model.state_dict(), meta={}), checkpoint)
        start = time.perf_counter()
        info = export_onnx(config, checkpoint, osp.join(folder, 'export'), shape=(height, width),
                           force=True, cfg_options=options, tolerance=DEPLOY_TOLERANCE,
                           deformable_attention='gather', log=lambda msg: None)
        export_s = time.perf_counter() - start
        graph = (PanopticSegFormerGraph(model, with_stuff=model._with_stuff)
                 if family == 'panoptic_segformer' else Mask2FormerGraph(model)).eval()
        generator = torch.Generator().manual_seed(0)
        inputs = [torch.randn(1, 3, height, width, generator=generator)]
        if family == 'panoptic_segformer':
            inputs.append(torch.tensor([[height, width]]))
        elif graph.is_maps:
            inputs += memory_example(graph, 1, info['memory']['k'], size['object_slots'],
                                     generator)
        names = [o['name'] for o in info['outputs']]
        feed = {n: t.numpy() for n, t in zip(graph.input_names, inputs)}
        runs = {}
        for provider in providers:
            options_ = ort.SessionOptions()
            options_.intra_op_num_threads = threads
            options_.log_severity_level = 3
            session = ort.InferenceSession(osp.join(folder, 'export', 'model.onnx'), options_,
                                           providers=[provider])
            runs[f'onnxruntime {provider[:-len("ExecutionProvider")]}'] = (
                lambda session=session: session.run(names, feed))

        def torch_on(where):
            moved = [t.to(where) for t in inputs]
            net = graph.to(where)

            def run():
                with torch.no_grad():
                    out = net(*moved)
                if where.type == 'cuda':
                    torch.cuda.synchronize()
                return out
            return run
        runs['PyTorch CPU'] = torch_on(torch.device('cpu'))
        reference = runs['PyTorch CPU']()
        outputs = {name: fn() for name, fn in runs.items()}
        ms = {name: 1000 * statistics.median(t) for name, t in zip(
            runs, interleaved_seconds(list(runs.values()), size['reps'], size['warmup']))}
        if device.type == 'cuda':  # after the CPU runs: the graph moves to the GPU
            gpu = torch_on(device)
            outputs['PyTorch GPU'] = gpu()
            ms['PyTorch GPU'] = 1000 * statistics.median(_timed(gpu, size['warmup'],
                                                                size['reps']))
        checked = info['verification']['model'].values()
        row = {'family': family, 'export s': round(export_s, 1),
               'export check max |diff|': f'{max(max(d.values()) for d in checked):.1e}'}
        for name, value in ms.items():
            row[f'{name} ms/img'] = round(value, 1)
            if name != 'PyTorch CPU':
                diff = max(max_abs_difference(ref, _as_numpy(out), f'{name} {n}')
                           for ref, out, n in zip(reference, outputs[name], names))
                row[f'{name} max |diff|'] = f'{diff:.1e}'
        rows.append(row)
        graph.cpu()
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    result = dict(rows=rows, input=f'{height}x{width}, batch 1, fp32, random init',
                  threads=f'{threads} (torch.get_num_threads; onnxruntime intra-op)',
                  deformable_attention='gather', onnx=onnx.__version__,
                  onnxruntime=f'{ort.__version__}, providers {providers}',
                  max_diff='against PyTorch on the CPU')
    if 'CUDAExecutionProvider' not in providers:
        result['note'] = ('this onnxruntime has no CUDA provider: PyPI\'s onnxruntime-gpu 1.31 '
                          'is a CUDA 13 build, but its 243 MiB wheel is far over the 64 MiB a '
                          'device call carries')
    return result


def _as_numpy(output) -> np.ndarray:
    return output if isinstance(output, np.ndarray) else output.detach().cpu().numpy()


# --------------------------------------------------------------------------- ddp
def ddp(ctx):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return f'skipped: {count} GPU(s) visible, a DDP step needs 2'
    if not getattr(ctx, 'memory_root', None):
        raise RuntimeError('the ddp section needs the data of the memory_build section')
    config = write_config(ctx, 'mask2former')
    work = osp.join(ctx.work, 'ddp')
    start = time.perf_counter()
    proc = subprocess.run(
        ['bash', osp.join(REPO, 'tools/dist_train.sh'), config, '2', '--work-dir', work,
         '--cfg-options', 'train_cfg.max_iters=2', 'train_cfg.val_interval=100',
         'default_hooks.checkpoint.interval=100', 'train_dataloader.batch_size=1',
         'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False'],
        env=dict(os.environ, PYTHON=sys.executable, PORT='29633'), capture_output=True,
        text=True)
    if proc.returncode:
        raise RuntimeError(f'dist_train.sh failed:\n{proc.stderr[-3000:]}')
    return dict(processes=2, iterations=2, seconds=round(time.perf_counter() - start, 1))


# --------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='report directory')
    parser.add_argument('--work', help='scratch directory (default: OUT/../gpu_acceptance_work '
                        'outside the report)')
    parser.add_argument('--dry-run', action='store_true', help='tiny sizes on the CPU')
    parser.add_argument('--only', nargs='+', choices=SECTIONS, help='run these sections only')
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error('no CUDA device: run with --dry-run on a machine without a GPU')
    work = args.work or osp.join(osp.dirname(osp.abspath(args.out)), 'gpu_acceptance_work')
    os.makedirs(work, exist_ok=True)
    ctx = SimpleNamespace(dry_run=args.dry_run, sizes=SIZES['dry' if args.dry_run else 'real'],
                          work=work, memory_root=None)
    report = Report(args.out, args.dry_run)
    functions = dict(environment=environment, msda=msda, memory_build=memory_build,
                     models=models, retrieval=retrieval, deployment=deployment,
                     ddp=ddp)
    failed = False
    for name in SECTIONS:
        if args.only and name not in args.only:
            continue
        failed |= report.run(name, functions[name], ctx)['status'] == 'failed'
    print(f'report: {osp.join(args.out, "gpu_acceptance.md")}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
