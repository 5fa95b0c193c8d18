"""Export a trained Mask2Former, MAPS or Panoptic SegFormer to ONNX (one export folder).

An export folder holds:

- ``model.onnx``: the network (:mod:`mmmaps.deployment.graphs`), opset :data:`OPSET`;
  deformable attention is computed with Gather (``deformable_attention='gather'``, the
  default: :mod:`mmmaps.deployment.deformable_attention`) or as mmcv's pure-PyTorch CPU
  path (``'grid_sample'``: one ONNX GridSample per level, opset >= 16);
- ``key_encoder.onnx`` (MAPS): the frozen key encoder, 0-255 crops -> L2-normalised keys;
- ``config.py``: the config the graph was built from (the runtime reads its data
  preprocessor, fusion head, ``test_cfg``, dataset meta and memory section);
- ``deploy.json``: config and checkpoint (with sha256), opset and versions, every input
  and output (name, shape, dtype), the mask stride, the memory spec of MAPS, what the
  export verified (max |PyTorch - onnxruntime| per output), the sha256 of every file, and
  ``deploy_sha256``, a checksum of its own content (:func:`deploy_digest`) that
  :func:`read_export` verifies before the runtime trusts any field.

The folder is written under a temporary name and renamed when complete; an existing
folder is replaced only with ``force`` and only if it is an export (it has
``deploy.json`` and nothing else than export files).
"""
import copy
import hashlib
import json
import os.path as osp
import platform
import shlex
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..memory.storage import atomic_directory, sha256_file
from ..utils.output_dirs import check_output_dir
from .deformable_attention import (DEFORMABLE_ATTENTION_KINDS, MMDEPLOY_OP,
                                   exported_deformable_attention)
from .errors import CheckpointMismatchError, DeploymentError, require_onnx

OPSET = 17
FORMAT_NAME = 'mmmaps-onnx-export'
FORMAT_VERSION = 2  # 2: deploy.json carries deploy_sha256, a checksum of its own content
DEPLOY_JSON = 'deploy.json'
DEPLOY_DIGEST = 'deploy_sha256'
MODEL_ONNX = 'model.onnx'
KEY_ENCODER_ONNX = 'key_encoder.onnx'
CONFIG_PY = 'config.py'
EXPORT_FILES = (DEPLOY_JSON, MODEL_ONNX, KEY_ENCODER_ONNX, CONFIG_PY)
TOLERANCE = 1e-3
#: the default of ``export_onnx(deformable_attention=...)``: Gather is faster in onnxruntime
#: than GridSample (benchmarks/results/onnx_speed.md) and has no GridSample for TensorRT
DEFORMABLE_ATTENTION = 'gather'


# --------------------------------------------------------------------------- loading
def build_model_from_config(cfg):
    """The config's model, built without initialising (or downloading) any weights."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    import mmmaps  # noqa: F401  (registers the mmmaps modules)
    return MODELS.build(copy.deepcopy(cfg.model))  # mmdet's builders edit their config


def load_checkpoint_strict(model: torch.nn.Module, checkpoint: str, config: str) -> dict:
    """Load ``checkpoint`` into ``model``, refusing any missing, unexpected or
    differently shaped weight (a checkpoint of another config), by the check every
    mmmaps load shares (:func:`mmmaps.utils.checkpoint_fit.checkpoint_fit_check`).

    Returns the whole checkpoint (its ``meta`` records the MAPS memory)."""
    from ..utils.checkpoint_fit import checkpoint_fit_check
    from ..utils.checkpoint_loading import safe_torch_load
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint} does not exist')
    ckpt = safe_torch_load(checkpoint, map_location='cpu')
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointMismatchError(f'{checkpoint} holds no state_dict of tensors')
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    try:
        with checkpoint_fit_check(model, checkpoint):
            # the check refused every difference but the model's documented allowances
            model.load_state_dict(state, strict=False)
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(
            f'{err} (the checkpoint does not match the model of {config}). Export with the '
            'config the checkpoint was trained with.') from None
    return ckpt if isinstance(ckpt, dict) else {}


def default_export_shape(cfg) -> Tuple[int, int]:
    """(H, W) that holds every test image: the test ``Resize`` scale's long side squared,
    rounded up to the data preprocessor's ``pad_size_divisor``."""
    from ..apis.inference import pipeline_without_annotations
    scale = None
    for step in pipeline_without_annotations(cfg):
        if str(step.get('type', '')).rpartition('.')[2] in ('Resize', 'FixScaleResize'):
            scale = step.get('scale')
    if scale is None:
        raise DeploymentError('the test pipeline has no Resize with a scale, so the export '
                              'shape cannot be derived: pass --shape H W')
    side = max(scale) if isinstance(scale, (list, tuple)) else int(scale)
    divisor = int(cfg.model.get('data_preprocessor', {}).get('pad_size_divisor', 1) or 1)
    side = -(-side // divisor) * divisor
    return side, side


# --------------------------------------------------------------------------- export
def _spec(name: str, array, axes: Dict[int, str]) -> dict:
    shape = [axes.get(i, int(s)) for i, s in enumerate(array.shape)]
    return dict(name=name, shape=shape, dtype=str(np.asarray(array).dtype))


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def max_abs_difference(reference: torch.Tensor, actual: np.ndarray, name: str) -> float:
    """max |reference - actual| over finite entries; infinities must coincide."""
    reference = _numpy(reference)
    if reference.shape != actual.shape:
        raise DeploymentError(f'{name}: onnxruntime gives shape {actual.shape}, PyTorch '
                              f'{reference.shape}')
    finite = np.isfinite(reference)
    if not np.array_equal(finite, np.isfinite(actual)) or not np.array_equal(
            reference[~finite], actual[~finite]):
        raise DeploymentError(f'{name}: onnxruntime and PyTorch disagree on non-finite '
                              'entries')
    if not finite.any():
        return 0.0
    return float(np.abs(reference[finite] - actual[finite]).max())


def _export(module: torch.nn.Module, args: tuple, path: str, input_names: List[str],
            output_names: List[str], dynamic_axes: Dict[str, Dict[int, str]],
            opset: int) -> None:
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's inference fast path (a fused op) has no ONNX export
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            # tracing mmdet/mmcv code warns about every python int it reads from a shape
            warnings.simplefilter('ignore')
            with torch.no_grad():
                # the TorchScript exporter: from torch 2.9 the default is the torch.export
                # one, which ignores dynamic_axes and the deformable attention's symbolic
                torch.onnx.export(module, args, path, opset_version=opset,
                                  input_names=input_names, output_names=output_names,
                                  dynamic_axes=dynamic_axes, do_constant_folding=True,
                                  dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    import onnx
    onnx.checker.check_model(path)


def _verify(session, module: torch.nn.Module, cases: Sequence[Tuple[str, tuple]],
            input_names: List[str], output_names: List[str], tolerance: float) -> dict:
    """Run every case through PyTorch and onnxruntime; max abs difference per output."""
    report = {}
    for case, args in cases:
        with torch.no_grad():
            reference = module(*args)
        reference = reference if isinstance(reference, (tuple, list)) else (reference, )
        actual = session.run(output_names, {n: _numpy(a) for n, a in zip(input_names, args)})
        diffs = {name: max_abs_difference(r, a, f'{case} {name}')
                 for name, r, a in zip(output_names, reference, actual)}
        worst = max(diffs.values())
        if not worst <= tolerance:
            raise DeploymentError(
                f'the exported graph differs from PyTorch on {case}: max |difference| {diffs} '
                f'> {tolerance}. (Untrained weights can amplify float rounding: Mask2Former\'s '
                'masked attention thresholds mask logits at 0, and an untrained model has many '
                'near 0; if this is such a checkpoint, a larger --tolerance accepts it.)')
        report[case] = diffs
    return report


def _session(path: str):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def _memory_spec(cfg, graph) -> dict:
    head = graph.model.panoptic_head
    retrieval = dict((cfg.get('memory') or {}).get('retrieval') or {})
    return dict(reads_scene=graph.reads_scene, reads_objects=graph.reads_objects,
                aug_cls=graph.aug_cls,
                scene_dims=head.scene_memory_dims if graph.reads_scene else None,
                object_dims=head.object_memory_dims if graph.reads_objects else None,
                k=int(retrieval.get('k', 5)))


def export_onnx(config: str, checkpoint: str, out: str, shape: Optional[Tuple[int, int]] = None,
                dynamic: bool = False, opset: int = OPSET, force: bool = False,
                cfg_options: Optional[dict] = None, tolerance: float = TOLERANCE,
                deformable_attention: str = DEFORMABLE_ATTENTION, log=print) -> dict:
    """Export ``checkpoint`` of ``config`` to the folder ``out``; returns ``deploy.json``.

    Args:
        shape: (H, W) of the padded input of a fixed-shape graph (default
            :func:`default_export_shape`).
        dynamic: Height and width as dynamic axes, and the batch for Mask2Former and MAPS
            (Panoptic SegFormer runs one image per call); checked at a second shape (and
            batch size). The memory slots of MAPS are always dynamic.
        tolerance: Largest max |PyTorch - onnxruntime| accepted on the verification inputs.
        deformable_attention: How the graph computes mmcv's multi-scale deformable
            attention (Mask2Former's and MAPS's pixel decoder, Panoptic SegFormer's encoder):
            ``'gather'`` (index arithmetic and Gather,
            :func:`~mmmaps.deployment.deformable_attention.multi_scale_deformable_attn_gather`)
            or ``'grid_sample'`` (mmcv's CPU path: one GridSample per level); the
            verification compares either with the PyTorch model as it runs (grid_sample).
            ``'mmdeploy'``: one ``mmdeploy::MMCVMultiScaleDeformableAttention`` node per
            attention layer, for a TensorRT engine with mmdeploy's plugin; onnxruntime cannot
            run it, so the graph is not verified and the runtime refuses the folder.
    """
    require_onnx('tools/deployment/export_onnx.py')
    if deformable_attention not in DEFORMABLE_ATTENTION_KINDS:
        raise DeploymentError(f'deformable attention {deformable_attention!r}: expected one '
                              f'of {", ".join(DEFORMABLE_ATTENTION_KINDS)}')
    from mmengine.config import Config

    from .graphs import (Mask2FormerGraph, PanopticSegFormerGraph, memory_example,
                         model_family)
    if opset < 16:
        raise DeploymentError(f'opset {opset}: deformable attention needs GridSample '
                              '(opset >= 16)')
    out = osp.abspath(out)
    check_output_dir(out, 'ONNX export', force, legacy_markers=(DEPLOY_JSON, ))
    if not osp.isfile(config):
        raise FileNotFoundError(f'config {config} does not exist')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('memory') is not None:
        from ..memory.build_plan import memory_cfg_of
        memory_cfg_of(cfg)  # every key of the memory section known (before any work)
    model = build_model_from_config(cfg).eval()
    family = model_family(model)
    ckpt = load_checkpoint_strict(model, checkpoint, config)
    height, width = shape or default_export_shape(cfg)
    divisor = int(cfg.model.get('data_preprocessor', {}).get('pad_size_divisor', 1) or 1)
    if height % divisor or width % divisor:
        raise DeploymentError(f'--shape {height} {width} is not a multiple of the data '
                              f'preprocessor\'s pad_size_divisor {divisor}')
    generator = torch.Generator().manual_seed(0)
    # mmdet's deformable-DETR code bakes the batch size into the trace: Panoptic SegFormer
    # gets dynamic height and width with one image per run
    batch_axis = {0: 'batch'} if dynamic and family != 'panoptic_segformer' else {}
    spatial = {**batch_axis, 2: 'height', 3: 'width'} if dynamic else {}
    output_names = ['cls_logits', 'mask_logits']
    info = dict(format=FORMAT_NAME, format_version=FORMAT_VERSION, family=family,
                config=osp.abspath(config), checkpoint=osp.abspath(checkpoint),
                checkpoint_sha256=sha256_file(checkpoint), opset=opset, dynamic=dynamic,
                deformable_attention=deformable_attention,
                shape=[height, width],
                versions=dict(torch=torch.__version__, python=platform.python_version()))

    with atomic_directory(out, what='ONNX export', legacy_markers=(DEPLOY_JSON, )) as tmp:
        model_path = osp.join(tmp, MODEL_ONNX)
        image = torch.randn(1, 3, height, width, generator=generator)
        if family == 'panoptic_segformer':
            graph = PanopticSegFormerGraph(model, with_stuff=model._with_stuff).eval()
            info['with_stuff'] = graph.with_stuff
            full = torch.tensor([[height, width]])
            part = torch.tensor([[max(height * 3 // 4, 1), max(width // 2, 1)]])
            args = (image, full)
            cases = [('full image', args), ('padded image', (image, part))]
            axes = {'inputs': spatial, 'img_shape': dict(batch_axis)}
        else:
            graph = Mask2FormerGraph(model).eval()
            k = _memory_spec(cfg, graph)['k'] if graph.is_maps else 0
            args = (image, *memory_example(graph, 1, k, 3 * k, generator))
            cases = [('example', args)]
            if graph.is_maps:
                info['memory'] = _memory_spec(cfg, graph)
                info['memory']['trained_with'] = (ckpt.get('meta') or {}).get('memory')
                more = memory_example(graph, 1, k, 7 * k, generator)
                cases.append(('more object slots', (image, *more)))
                if graph.reads_objects:
                    empty = list(more)
                    index = graph.input_names.index('object_mask') - 1
                    empty[index] = torch.ones_like(empty[index])
                    cases.append(('all object slots padded', (image, *empty)))
            axes = {'inputs': spatial}
            for name in graph.input_names[1:]:
                axes[name] = dict(batch_axis)
                if name in ('scene', 'scene_mask'):
                    axes[name][1] = 'scene_slots'
                elif name in ('objects', 'object_mask'):
                    axes[name][1] = 'object_slots'
        if dynamic:
            other = (height + divisor, max(width - divisor, divisor))
            if family == 'panoptic_segformer':
                image2 = torch.randn(1, 3, *other, generator=generator)
                valid = torch.tensor([[other[0] - divisor // 2, other[1]]])
                cases.append((f'{other[0]}x{other[1]}, padded', (image2, valid)))
            else:
                image2 = torch.randn(2, 3, *other, generator=generator)
                extra = memory_example(graph, 2, 2, 5, generator) if family == 'maps' else []
                cases.append((f'batch 2 at {other[0]}x{other[1]}', (image2, *extra)))
        log(f'exporting {family} ({config}) at {height}x{width}'
            + (f' (dynamic {"/".join(spatial.values())})' if dynamic else '')
            + f', opset {opset} ...')
        with exported_deformable_attention(deformable_attention):
            _export(graph, args, model_path, graph.input_names, output_names,
                    {k: v for k, v in axes.items() if v}, opset)
        if deformable_attention == 'mmdeploy':
            # onnxruntime has no kernel for mmdeploy's plugin op: nothing can run the graph
            # here; the same export with 'gather' is verified like every other
            info['verification'] = dict(tolerance=tolerance, model={}, not_run=(
                f'{MMDEPLOY_OP} needs mmdeploy\'s TensorRT plugin; onnxruntime cannot run it'))
        else:
            session = _session(model_path)
            info['verification'] = dict(
                tolerance=tolerance, model=_verify(session, graph, cases, graph.input_names,
                                                   output_names, tolerance))
        with torch.no_grad():
            outputs = graph(*args)
        info['mask_stride'] = height // int(outputs[1].shape[-2])
        out_axes = dict(cls_logits=dict(batch_axis),
                        mask_logits={**batch_axis, 2: 'height/stride', 3: 'width/stride'}
                        if dynamic else {})
        info['inputs'] = [_spec(n, _numpy(a), axes.get(n, {})) for n, a in
                          zip(graph.input_names, args)]
        info['outputs'] = [_spec(n, _numpy(o), out_axes[n])
                           for n, o in zip(output_names, outputs)]
        if family == 'maps' and graph.needs_memory:
            info['key_encoder'] = _export_key_encoder(cfg, tmp, opset, tolerance, generator,
                                                      log)
        cfg.dump(osp.join(tmp, CONFIG_PY))
        info['files'] = {name: sha256_file(osp.join(tmp, name)) for name in EXPORT_FILES
                         if osp.isfile(osp.join(tmp, name))}
        info[DEPLOY_DIGEST] = deploy_digest(info)
        with open(osp.join(tmp, DEPLOY_JSON), 'w') as f:
            json.dump(info, f, indent=2)
    checks = dict(info['verification']['model'])
    checks.update({f'key encoder, {case}': d for case, d in
                   info.get('key_encoder', {}).get('verification', {}).items()})
    log(f'wrote {out} ({", ".join(sorted(info["files"]))}); max |PyTorch - onnxruntime|: '
        + ', '.join(f'{case} {max(d.values()):.2e}' for case, d in checks.items()))
    return info


def _export_key_encoder(cfg, folder: str, opset: int, tolerance: float, generator,
                        log) -> dict:
    """``key_encoder.onnx`` of a MAPS config's ``memory.key_encoder``."""
    from ..memory.encoders import build_memory_encoder
    from .graphs import KeyEncoderGraph
    memory_cfg = cfg.get('memory') or {}
    if 'key_encoder' not in memory_cfg:
        raise DeploymentError('the MAPS config has no memory.key_encoder to export')
    encoder = build_memory_encoder(memory_cfg['key_encoder'], 'memory.key_encoder').eval()
    graph = KeyEncoderGraph(encoder).eval()
    size = int(encoder.image_size)
    crops = torch.rand(1, 3, size, size, generator=generator) * 255
    path = osp.join(folder, KEY_ENCODER_ONNX)
    log(f'exporting the key encoder {encoder.describe().get("arch")} ({size}x{size} crops) ...')
    _export(graph, (crops, ), path, graph.input_names, ['keys'], {'crops': {0: 'batch'},
                                                                  'keys': {0: 'batch'}}, opset)
    cases = [('one crop', (crops, )),
             ('batch 3', (torch.rand(3, 3, size, size, generator=generator) * 255, ))]
    report = _verify(_session(path), graph, cases, graph.input_names, ['keys'], tolerance)
    return dict(file=KEY_ENCODER_ONNX, image_size=size, describe=encoder.describe(),
                inputs=[dict(name='crops', shape=['batch', 3, size, size], dtype='float32')],
                outputs=[dict(name='keys', shape=['batch', int(encoder.out_channels)],
                              dtype='float32')],
                verification=report)


def deploy_digest(info: dict) -> str:
    """The checksum ``deploy.json`` carries of itself (its ``deploy_sha256``): the sha256 of
    ``info`` without that field, as canonical JSON (sorted keys, no whitespace), so it does
    not depend on the file's indentation but on every value in it."""
    body = {key: value for key, value in info.items() if key != DEPLOY_DIGEST}
    canonical = json.dumps(json.loads(json.dumps(body)), sort_keys=True, separators=(',', ':'))
    return hashlib.sha256(canonical.encode()).hexdigest()


def export_command(info: dict, folder: str) -> str:
    """The ``export_onnx.py`` command that writes ``folder`` again from what its
    ``deploy.json`` records (config, checkpoint, shape, dynamic axes, opset)."""
    words = ['python', 'tools/deployment/export_onnx.py', str(info.get('config') or 'CONFIG'),
             str(info.get('checkpoint') or 'CHECKPOINT'), '--out', folder]
    shape = info.get('shape')
    if isinstance(shape, list) and len(shape) == 2:
        words += ['--shape', str(shape[0]), str(shape[1])]
    if info.get('dynamic') is True:
        words.append('--dynamic')
    if info.get('opset') not in (None, OPSET):
        words += ['--opset', str(info['opset'])]
    return ' '.join(shlex.quote(word) for word in words + ['--force'])


def read_export(folder: str) -> dict:
    """``deploy.json`` of an export folder, checked: format, its own checksum
    (``deploy_sha256``, :func:`deploy_digest`), and the files it lists with their sha256.

    An export of format version 1 (written before deploy.json had a checksum) is refused
    naming the command that exports it again: an edit to its deploy.json could not be
    told from the export, and the runtime trusts every shape and setting in it."""
    path = osp.join(folder, DEPLOY_JSON)
    if not osp.isfile(path):
        raise DeploymentError(f'{folder} is not an ONNX export of tools/deployment/'
                              f'export_onnx.py: it has no {DEPLOY_JSON}')
    try:
        with open(path) as f:
            info = json.load(f)
    except ValueError as err:
        raise DeploymentError(f'{path}: not valid JSON ({err})') from None
    if not isinstance(info, dict) or info.get('format') != FORMAT_NAME:
        raise DeploymentError(f'{path}: not the {DEPLOY_JSON} of an ONNX export of '
                              f'tools/deployment/export_onnx.py (format {FORMAT_NAME!r})')
    if info.get('format_version') == 1:
        raise DeploymentError(
            f'{path}: an export of an older mmmaps (format version 1), whose {DEPLOY_JSON} has '
            'no checksum of its own, so an edit to it cannot be detected; export it again: '
            + export_command(info, folder))
    if info.get('format_version') != FORMAT_VERSION:
        raise DeploymentError(f'{path}: format version {info.get("format_version")!r}; this '
                              f'mmmaps reads {FORMAT_NAME!r} version {FORMAT_VERSION}')
    if info.get(DEPLOY_DIGEST) != deploy_digest(info):
        raise DeploymentError(
            f'{path} was changed after the export: its content does not match its '
            f'{DEPLOY_DIGEST} (the runtime would trust the changed shapes and settings). '
            f'Restore the file, or export again: {export_command(info, folder)}')
    for name, digest in (info.get('files') or {}).items():
        file = osp.join(folder, name)
        if not osp.isfile(file):
            raise DeploymentError(f'{folder}: {name} is missing ({DEPLOY_JSON} lists it)')
        if sha256_file(file) != digest:
            raise DeploymentError(f'{folder}: {name} is not the file that was exported (sha256 '
                                  f'differs from {DEPLOY_JSON}); export again')
    return info


__all__ = ['export_onnx', 'read_export', 'load_checkpoint_strict', 'default_export_shape',
           'deploy_digest', 'export_command', 'OPSET', 'EXPORT_FILES', 'DEPLOY_JSON',
           'DEPLOY_DIGEST', 'MODEL_ONNX', 'KEY_ENCODER_ONNX', 'CONFIG_PY',
           'max_abs_difference']
