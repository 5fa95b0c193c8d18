"""detectron2 Mask2Former checkpoints (facebookresearch/Mask2Former model zoo) -> mmdet's
``Mask2Former`` (and so MAPS, which is Mask2Former plus memory layers).

Source layout: ``MaskFormer`` of facebookresearch/Mask2Former with a detectron2 ResNet
backbone (R50/R101, ``STRIDE_IN_1X1=False``: torchvision's layout, mmdet's
``style='pytorch'``), ``MSDeformAttnPixelDecoder`` and ``MultiScaleMaskedTransformerDecoder``.
Every key is mapped by an explicit rule; anything else (e.g. a Swin backbone, for which mmmaps
has no Mask2Former config) is refused by name. Besides names:

- detectron2's ``FrozenBatchNorm2d`` has no ``num_batches_tracked``: mmdet's BN gets 0
  (a SyncBN backbone, as Cityscapes', has it and keeps it);
- ``criterion.empty_weight`` (the loss's class weights, a config value in mmdet) is not a
  model tensor and is left out; ``static_query`` is the old name of ``query_feat``, and
  keys of the pixel decoder saved directly under ``sem_seg_head.`` (module version < 2)
  are read as ``sem_seg_head.pixel_decoder.*``, as detectron2 itself does;
- class order: detectron2 numbers the classes of its dataset registration, mmdet/mmmaps put
  things first. The classifier's rows (``class_embed`` -> ``cls_embed``, the last row being
  "no object" on both sides) are permuted for ``dataset`` ``'ade20k'`` (SceneParse150 order
  -> things first) and ``'cityscapes'`` (trainId order, stuff first -> things first); COCO's
  order is the same on both sides.

Model-zoo files are ``.pkl`` pickles of ``{'model': {name: numpy array}, ...}``; they are
read with a restricted unpickler that builds numpy arrays and plain containers only (any
other class is refused by name, nothing of the file runs). ``.pth`` files are read with
torch's weights-only loader.
"""
import os.path as osp
import pickle
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..utils.checkpoint_loading import UntrustedCheckpointError, numpy_multiarray
from ..utils.text import name_list
from .common import (CONVERTER_META_KEY, REPO_ROOT, ConversionError, check_against,
                     expected_state, load_source_state_dict, save_converted, sha256_of)

NAME = 'mask2former_detectron2'
SOURCE = 'facebookresearch/Mask2Former (detectron2)'
_MAPS = osp.join(REPO_ROOT, 'configs', 'maps')
# the MAPS fine-tune config of each dataset (Mask2Former's architecture + memory layers)
CONFIGS = {
    'coco': 'maps_r50_8xb2-lsj-5e_coco-panoptic_from-mask2former.py',
    'ade20k': 'maps_r50_8xb2-lsj-16k_ade20k-panoptic_from-mask2former.py',
    'cityscapes': 'maps_r50_8xb2-lsj-5k_cityscapes-panoptic_from-mask2former.py',
}
NUM_CLASSES = {'coco': 133, 'ade20k': 150, 'cityscapes': 19}

_P = r'(weight|bias)'
_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
_HEAD = r'sem_seg_head\.'
_PIX = _HEAD + r'pixel_decoder\.'
_PRED = _HEAD + r'predictor\.'
_DEFORMABLE = r'(sampling_offsets|attention_weights|value_proj|output_proj)'
_ATTN = r'(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)'
_NORMS = {'conv1': 'bn1', 'conv2': 'bn2', 'conv3': 'bn3'}


def _stage(m):
    return f'layer{int(m[1]) - 1}'


# (pattern on the detectron2 key, mmdet key template or function of the match)
RULES: List[Tuple[str, object]] = [
    # ResNet: stem, then res2..res5 = layer1..layer4
    (r'backbone\.stem\.conv1\.weight', 'backbone.conv1.weight'),
    (rf'backbone\.stem\.conv1\.norm\.{_BN}', r'backbone.bn1.\1'),
    (r'backbone\.res([2-5])\.(\d+)\.(conv[123])\.weight',
     lambda m: f'backbone.{_stage(m)}.{m[2]}.{m[3]}.weight'),
    (rf'backbone\.res([2-5])\.(\d+)\.(conv[123])\.norm\.{_BN}',
     lambda m: f'backbone.{_stage(m)}.{m[2]}.{_NORMS[m[3]]}.{m[4]}'),
    (r'backbone\.res([2-5])\.(\d+)\.shortcut\.weight',
     lambda m: f'backbone.{_stage(m)}.{m[2]}.downsample.0.weight'),
    (rf'backbone\.res([2-5])\.(\d+)\.shortcut\.norm\.{_BN}',
     lambda m: f'backbone.{_stage(m)}.{m[2]}.downsample.1.{m[3]}'),
    # pixel decoder: input_proj i (i = 0 the coarsest level), both sides
    (rf'{_PIX}input_proj\.(\d+)\.0\.{_P}', r'panoptic_head.pixel_decoder.input_convs.\1.conv.\2'),
    (rf'{_PIX}input_proj\.(\d+)\.1\.{_P}', r'panoptic_head.pixel_decoder.input_convs.\1.gn.\2'),
    (rf'{_PIX}transformer\.level_embed', 'panoptic_head.pixel_decoder.level_encoding.weight'),
    (rf'{_PIX}transformer\.encoder\.layers\.(\d+)\.self_attn\.{_DEFORMABLE}\.{_P}',
     r'panoptic_head.pixel_decoder.encoder.layers.\1.self_attn.\2.\3'),
    (rf'{_PIX}transformer\.encoder\.layers\.(\d+)\.linear1\.{_P}',
     r'panoptic_head.pixel_decoder.encoder.layers.\1.ffn.layers.0.0.\2'),
    (rf'{_PIX}transformer\.encoder\.layers\.(\d+)\.linear2\.{_P}',
     r'panoptic_head.pixel_decoder.encoder.layers.\1.ffn.layers.1.\2'),
    (rf'{_PIX}transformer\.encoder\.layers\.(\d+)\.norm([12])\.{_P}',
     lambda m: f'panoptic_head.pixel_decoder.encoder.layers.{m[1]}.norms.{int(m[2]) - 1}.{m[3]}'),
    # the FPN part: adapter_k / layer_k (k = 1 the finest level) -> lateral/output_convs.(k-1)
    (r'sem_seg_head\.pixel_decoder\.adapter_(\d+)\.weight',
     lambda m: f'panoptic_head.pixel_decoder.lateral_convs.{int(m[1]) - 1}.conv.weight'),
    (rf'{_PIX}adapter_(\d+)\.norm\.{_P}',
     lambda m: f'panoptic_head.pixel_decoder.lateral_convs.{int(m[1]) - 1}.gn.{m[2]}'),
    (r'sem_seg_head\.pixel_decoder\.layer_(\d+)\.weight',
     lambda m: f'panoptic_head.pixel_decoder.output_convs.{int(m[1]) - 1}.conv.weight'),
    (rf'{_PIX}layer_(\d+)\.norm\.{_P}',
     lambda m: f'panoptic_head.pixel_decoder.output_convs.{int(m[1]) - 1}.gn.{m[2]}'),
    (rf'{_PIX}mask_features\.{_P}', r'panoptic_head.pixel_decoder.mask_feature.\1'),
    # transformer decoder: each layer is cross-attention, self-attention, FFN on both sides
    (rf'{_PRED}transformer_cross_attention_layers\.(\d+)\.multihead_attn\.{_ATTN}',
     r'panoptic_head.transformer_decoder.layers.\1.cross_attn.attn.\2'),
    (rf'{_PRED}transformer_cross_attention_layers\.(\d+)\.norm\.{_P}',
     r'panoptic_head.transformer_decoder.layers.\1.norms.0.\2'),
    (rf'{_PRED}transformer_self_attention_layers\.(\d+)\.self_attn\.{_ATTN}',
     r'panoptic_head.transformer_decoder.layers.\1.self_attn.attn.\2'),
    (rf'{_PRED}transformer_self_attention_layers\.(\d+)\.norm\.{_P}',
     r'panoptic_head.transformer_decoder.layers.\1.norms.1.\2'),
    (rf'{_PRED}transformer_ffn_layers\.(\d+)\.linear1\.{_P}',
     r'panoptic_head.transformer_decoder.layers.\1.ffn.layers.0.0.\2'),
    (rf'{_PRED}transformer_ffn_layers\.(\d+)\.linear2\.{_P}',
     r'panoptic_head.transformer_decoder.layers.\1.ffn.layers.1.\2'),
    (rf'{_PRED}transformer_ffn_layers\.(\d+)\.norm\.{_P}',
     r'panoptic_head.transformer_decoder.layers.\1.norms.2.\2'),
    (rf'{_PRED}decoder_norm\.{_P}', r'panoptic_head.transformer_decoder.post_norm.\1'),
    (rf'{_PRED}(query_feat|static_query)\.weight', 'panoptic_head.query_feat.weight'),
    (rf'{_PRED}query_embed\.weight', 'panoptic_head.query_embed.weight'),
    (rf'{_PRED}level_embed\.weight', 'panoptic_head.level_embed.weight'),
    (rf'{_PRED}class_embed\.{_P}', r'panoptic_head.cls_embed.\1'),
    (rf'{_PRED}mask_embed\.layers\.([012])\.{_P}',
     lambda m: f'panoptic_head.mask_embed.{2 * int(m[1])}.{m[2]}'),
]
_COMPILED = [(re.compile(p), r) for p, r in RULES]
# not model weights: the loss's class weights (mmdet keeps them in loss_cls.class_weight)
IGNORED = ('criterion.empty_weight', )


def current_layout(key: str) -> str:
    """Keys of checkpoints saved before the pixel decoder moved under
    ``sem_seg_head.pixel_decoder`` (module version < 2, MaskFormer's layout), in today's
    layout, as ``MaskFormerHead._load_from_state_dict`` renames them when it loads."""
    if key.startswith('sem_seg_head.') and not key.startswith(
            ('sem_seg_head.pixel_decoder.', 'sem_seg_head.predictor.')):
        return 'sem_seg_head.pixel_decoder.' + key[len('sem_seg_head.'):]
    return key


# ------------------------------------------------------------------ reading the source
_NUMPY_GLOBALS = {
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('collections', 'OrderedDict'),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays, numpy scalars and plain containers; refuses any other global."""

    def find_class(self, module: str, name: str):
        allowed = (module, name) in _NUMPY_GLOBALS or (
            module in ('numpy', 'numpy.dtypes') and name.endswith('DType'))
        if not allowed:
            raise UntrustedCheckpointError(
                f'the pickle holds {module}.{name}, which is not a numpy array or plain data; '
                'mmmaps does not unpickle it (nothing of the file was run)')
        if module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
            return getattr(numpy_multiarray(), name)  # numpy 1 and 2 name it differently
        return super().find_class(module, name)


def read_detectron2_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(state dict of tensors, the other top-level entries)`` of a detectron2 checkpoint:
    a ``.pkl`` (numpy arrays under ``'model'``) or a ``.pth``."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path}: no such checkpoint file')
    with open(path, 'rb') as f:
        zip_file = f.read(4) == b'PK\x03\x04'  # torch.save's format
    if zip_file:
        return load_source_state_dict(path)
    with open(path, 'rb') as f:
        try:
            data = _NumpyOnlyUnpickler(f, encoding='latin1').load()
        except UntrustedCheckpointError as err:
            raise UntrustedCheckpointError(f'{path}: {err}') from None
        except Exception as err:  # truncated or not a pickle at all
            raise ConversionError(f'{path}: not a readable pickle ({err})') from None
    if not isinstance(data, dict) or not isinstance(data.get('model', data), dict):
        raise ConversionError(f"{path}: expected a dict with the weights under 'model'")
    weights = data.get('model', data)
    state, bad = OrderedDict(), []
    for key, value in weights.items():
        if isinstance(value, np.ndarray):
            state[key] = torch.from_numpy(np.ascontiguousarray(value))
        else:
            bad.append(key)
    if bad:
        raise ConversionError(f"{path}: entries of 'model' that are not arrays: {bad[:12]}")
    return state, {k: v for k, v in data.items() if k != 'model' and isinstance(
        v, (str, int, float, bool))}


# ------------------------------------------------------------------ mapping
def class_order(dataset: str) -> Optional[List[int]]:
    """For each mmmaps class label, the detectron2 class index (None: the same order)."""
    if dataset == 'coco':
        return None
    if dataset == 'ade20k':  # detectron2: SceneParse150 order; mmmaps: things first
        from ..datasets.panoptic_conversion.ade20k import ADE20K_LABEL_IDS
        return [i - 1 for i in ADE20K_LABEL_IDS]
    if dataset == 'cityscapes':  # detectron2: trainId order (11 stuff, 8 things)
        from ..datasets.panoptic_conversion.cityscapes import CITYSCAPES_STUFF, CITYSCAPES_THINGS
        train_ids = {label: i for i, label in enumerate(
            [c[1] for c in CITYSCAPES_STUFF] + [c[1] for c in CITYSCAPES_THINGS])}
        return [train_ids[c[1]] for c in CITYSCAPES_THINGS + CITYSCAPES_STUFF]
    raise ConversionError(f'unknown dataset {dataset!r} (expected one of {list(NUM_CLASSES)})')


def convert_state_dict(state: Dict[str, torch.Tensor], dataset: Optional[str]
                       ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(mmdet state dict, {mmdet key: detectron2 key}); refuses unmapped keys by name.
    ``dataset`` (coco, ade20k, cityscapes, or None: keep the order) orders the classes."""
    converted, source_of, unmapped = OrderedDict(), {}, []
    for key, value in state.items():
        if key in IGNORED:
            continue
        new = None
        for pattern, replacement in _COMPILED:
            match = pattern.fullmatch(current_layout(key))
            if match:
                new = replacement(match) if callable(replacement) else match.expand(replacement)
                break
        if new is None:
            unmapped.append(key)
            continue
        if new in converted:
            raise ConversionError(f'{key} and {source_of[new]} both map to {new}')
        converted[new], source_of[new] = value, key
    for key in [k for k in converted if k.endswith('.running_var')]:
        counter = key[:-len('running_var')] + 'num_batches_tracked'
        if counter not in converted:  # FrozenBatchNorm2d has no step counter: mmdet's BN 0
            converted[counter] = torch.zeros((), dtype=torch.long)
            source_of[counter] = f'(0 for the FrozenBatchNorm2d of {source_of[key]})'
    if unmapped:
        raise ConversionError(
            f'{len(unmapped)} key(s) are not part of a ResNet Mask2Former of {SOURCE} and were '
            'not converted (Swin backbones are not supported: mmmaps has no Swin Mask2Former '
            'config): ' + name_list(unmapped))
    order = class_order(dataset) if dataset else None
    if order is not None:
        for suffix in ('weight', 'bias'):
            key = f'panoptic_head.cls_embed.{suffix}'
            if key not in converted:
                raise ConversionError(f'the checkpoint has no classifier ({key})')
            rows = converted[key]
            if rows.shape[0] != len(order) + 1:
                raise ConversionError(
                    f'{source_of[key]} has {rows.shape[0]} rows: {len(order)} classes of '
                    f'{dataset} + "no object" expected')
            converted[key] = torch.cat([rows[order], rows[-1:]])
    return converted, source_of


def detect_dataset(state: Dict[str, torch.Tensor]) -> Optional[str]:
    rows = state.get('sem_seg_head.predictor.class_embed.weight')
    count = None if rows is None else rows.shape[0] - 1
    return next((name for name, n in NUM_CLASSES.items() if n == count), None)


def convert(src: str, dst: str, dataset: Optional[str] = None, config: Optional[str] = None,
            force: bool = False) -> dict:
    """Convert a detectron2 Mask2Former checkpoint for ``config`` (default: the MAPS
    fine-tune config of ``dataset``, which is read from the class count when not given).
    Returns the meta block written."""
    state, source_meta = read_detectron2_checkpoint(src)
    found = detect_dataset(state)
    dataset = None if dataset == 'none' else (dataset or found)
    if dataset is None and config is None:
        raise ConversionError(f'{src}: its classifier fits none of {NUM_CLASSES} (or '
                              '--dataset none was given): pass --config YOUR_CONFIG, the model '
                              'the checkpoint is for (its class order is kept)')
    if dataset is not None and found is not None and dataset != found:
        raise ConversionError(f'{src}: --dataset {dataset} but its classifier has '
                              f'{NUM_CLASSES[found]} classes ({found})')
    config = config or osp.join(_MAPS, CONFIGS[dataset])
    converted, source_of = convert_state_dict(state, dataset)
    expected = expected_state(config)
    # a MAPS config: its memory layers are what a Mask2Former checkpoint cannot fill
    from ..models.detectors.maps import MAPS_ONLY_PARTS
    check_against(converted, {k: v for k, v in expected.items()
                              if not any(part in k for part in MAPS_ONLY_PARTS)},
                  source_of, f'{src} -> {osp.basename(config)}')
    meta = {CONVERTER_META_KEY: NAME, 'source': SOURCE, 'source_file': osp.basename(src),
            'source_sha256': sha256_of(src), 'dataset': dataset,
            'class_order': 'permuted to things first' if dataset in ('ade20k', 'cityscapes')
            else 'unchanged',
            'config': osp.relpath(config, REPO_ROOT) if config.startswith(REPO_ROOT) else config,
            'num_tensors': len(converted), 'source_meta': source_meta}
    save_converted(converted, dst, meta, force)
    return meta
