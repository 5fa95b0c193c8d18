"""The authors' released Panoptic SegFormer checkpoints -> mmmaps' release configs.

Source: zhiqi-li/Panoptic-SegFormer (commit cdb9b68; mmdet 2.12), the COCO checkpoints of
its ``releases/download/v1.0/`` (R50 1x/2x, R101, PVTv2-B5, Swin-L). Every key is mapped
by an explicit rule below; a key no rule maps is refused by name, and the result must fill
the ``state_dict()`` of the release config exactly (:func:`check_against`).

One tensor changes besides its name: the stuff queries. The release stores
``stuff_query.weight`` (53, 2C) as (content, positional) halves; mmmaps'
``stuff_queries.weight`` holds (positional, content), the order of Deformable DETR's
``query_embedding`` (which both sides store as (positional, content)).

Backbones: ResNet keys are the same in mmdet 2 and 3; the authors' Swin (Swin Transformer
object-detection code) and PVTv2 (the PVT v2 repository's code) go through mmdet's own
converters of those layouts (``swin_converter``, ``pvt_convert``), whose output is checked
against the model like every other key.
"""
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch

from ..utils.text import name_list
from .common import (CONVERTER_META_KEY, REPO_ROOT, ConversionError, check_against,
                     expected_state, load_source_state_dict, save_converted, sha256_of)

NAME = 'panoptic_segformer_official'
SOURCE = 'zhiqi-li/Panoptic-SegFormer@cdb9b68'
_CONFIGS = osp.join(REPO_ROOT, 'configs', 'panoptic_segformer')
VARIANTS = {
    'r50': 'panoptic-segformer-release_r50_8xb1-24e_coco-panoptic.py',
    'r101': 'panoptic-segformer-release_r101_8xb1-24e_coco-panoptic.py',
    'swin-l': 'panoptic-segformer-release_swin-l-p4-w7-22k_8xb1-24e_coco-panoptic.py',
    'pvtv2-b5': 'panoptic-segformer-release_pvtv2-b5_8xb1-24e_coco-panoptic.py',
}

_P = r'(weight|bias)'
_DEFORMABLE = r'(sampling_offsets|attention_weights|value_proj|output_proj)'
# (pattern on the authors' key, mmmaps key template) for everything but the backbone and
# the mask decoders
_RULES: List[Tuple[str, str]] = [
    (r'neck\.(.+)', r'neck.\1'),  # ChannelMapper: same module tree in mmdet 2 and 3
    (r'bbox_head\.transformer\.level_embeds', 'level_embed'),
    (rf'bbox_head\.transformer\.reference_points\.{_P}', r'reference_points_fc.\1'),
    (r'bbox_head\.query_embedding\.weight', 'query_embedding.weight'),
    (rf'bbox_head\.transformer\.encoder\.layers\.(\d+)\.attentions\.0\.{_DEFORMABLE}\.{_P}',
     r'encoder.layers.\1.self_attn.\2.\3'),
    (r'bbox_head\.transformer\.decoder\.layers\.(\d+)\.attentions\.0\.attn\.'
     r'(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)',
     r'decoder.layers.\1.self_attn.attn.\2'),
    (rf'bbox_head\.transformer\.decoder\.layers\.(\d+)\.attentions\.1\.{_DEFORMABLE}\.{_P}',
     r'decoder.layers.\1.cross_attn.\2.\3'),
    (rf'bbox_head\.transformer\.(encoder|decoder)\.layers\.(\d+)\.ffns\.0\.layers\.'
     rf'(0\.0|1)\.{_P}', r'\1.layers.\2.ffn.layers.\3.\4'),
    (rf'bbox_head\.transformer\.(encoder|decoder)\.layers\.(\d+)\.norms\.(\d)\.{_P}',
     r'\1.layers.\2.norms.\3.\4'),
    (rf'bbox_head\.cls_branches\.(\d+)\.{_P}', r'bbox_head.cls_branches.\1.\2'),
    (rf'bbox_head\.reg_branches\.(\d+)\.([024])\.{_P}', r'bbox_head.reg_branches.\1.\2.\3'),
    (r'bbox_head\.stuff_query\.weight', 'bbox_head.stuff_queries.weight'),
    (rf'bbox_head\.reg_branches2\.(\d+)\.([024])\.{_P}',
     r'bbox_head.thing_reg_branches.\1.\2.\3'),
    (rf'bbox_head\.cls_thing_branches\.(\d+)\.{_P}', r'bbox_head.thing_cls_branches.\1.\2'),
    (rf'bbox_head\.cls_stuff_branches\.(\d+)\.{_P}', r'bbox_head.stuff_cls_branches.\1.\2'),
]
_DECODERS = {'things_mask_head': 'thing_mask_decoder', 'stuff_mask_head': 'stuff_mask_decoder'}
_CROSS_ATTN = {'q': 'q_proj', 'k': 'k_proj', 'v': 'v_proj', 'proj': 'out_proj'}


def _mask_decoder_rules(source: str, target: str, self_attn: bool) -> List[Tuple[str, str]]:
    """Rules of one of the release's ``MaskHead`` -> :class:`AttentionMaskDecoder`.

    A release ``Block`` normalises after [self-attention (``norm3``),] cross-attention
    (``head_norm1``) and the MLP (``head_norm2``): mmmaps' ``norms`` in that order."""
    src, dst = rf'bbox_head\.{source}', f'bbox_head.{target}'
    first = 1 if self_attn else 0
    rules = [
        (rf'{src}\.blocks\.(\d+)\.attn\.linear_l([123])\.0\.{_P}',
         lambda m: f'{dst}.mask_heads.{m[1]}.level_fcs.{int(m[2]) - 1}.0.{m[3]}'),
        (rf'{src}\.blocks\.(\d+)\.attn\.linear\.0\.{_P}', rf'{dst}.mask_heads.\1.fc.0.\2'),
        (rf'{src}\.blocks\.(\d+)\.attn\.(q|k|v|proj)\.{_P}',
         lambda m: f'{dst}.layers.{m[1]}.cross_attn.{_CROSS_ATTN[m[2]]}.{m[3]}'),
        (rf'{src}\.blocks\.(\d+)\.mlp\.fc1\.{_P}', rf'{dst}.layers.\1.ffn.layers.0.0.\2'),
        (rf'{src}\.blocks\.(\d+)\.mlp\.fc2\.{_P}', rf'{dst}.layers.\1.ffn.layers.1.\2'),
        (rf'{src}\.blocks\.(\d+)\.head_norm1\.{_P}', rf'{dst}.layers.\1.norms.{first}.\2'),
        (rf'{src}\.blocks\.(\d+)\.head_norm2\.{_P}', rf'{dst}.layers.\1.norms.{first + 1}.\2'),
        (rf'{src}\.attnen\.(q|k)\.{_P}',
         lambda m: f'{dst}.tail.{_CROSS_ATTN[m[1]]}.{m[2]}'),
        (rf'{src}\.attnen\.linear_l([123])\.0\.{_P}',
         lambda m: f'{dst}.tail.mask_head.level_fcs.{int(m[1]) - 1}.0.{m[2]}'),
        (rf'{src}\.attnen\.linear\.0\.{_P}', rf'{dst}.tail.mask_head.fc.0.\1'),
    ]
    if self_attn:
        rules += [
            (rf'{src}\.blocks\.(\d+)\.norm3\.{_P}', rf'{dst}.layers.\1.norms.0.\2'),
            (rf'{src}\.blocks\.(\d+)\.self_attention\.qkv\.{_P}',
             rf'{dst}.layers.\1.self_attn.attn.in_proj_\2'),  # q, k, v rows, as PyTorch packs
            (rf'{src}\.blocks\.(\d+)\.self_attention\.proj\.{_P}',
             rf'{dst}.layers.\1.self_attn.attn.out_proj.\2'),
        ]
    return rules


def detect_variant(state: Dict[str, torch.Tensor]) -> str:
    """The backbone of an authors' checkpoint, from its keys."""
    if 'backbone.patch_embed.proj.weight' in state:
        return 'swin-l'
    if 'backbone.patch_embed1.proj.weight' in state:
        return 'pvtv2-b5'
    blocks = {int(m[1]) for k in state for m in [re.match(r'backbone\.layer3\.(\d+)\.', k)] if m}
    if blocks:
        return 'r101' if len(blocks) == 23 else 'r50' if len(blocks) == 6 else \
            f'resnet with {len(blocks)} layer3 blocks'
    raise ConversionError('the checkpoint has no backbone keys of the released models '
                          '(ResNet, Swin, PVTv2): is it a Panoptic SegFormer checkpoint of '
                          f'{SOURCE}?')


def convert_backbone(state: Dict[str, torch.Tensor], variant: str
                     ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The ``backbone.*`` tensors of ``state`` in mmdet's layout for ``variant``: (mmmaps
    state dict, {mmmaps key: source key})."""
    backbone = OrderedDict((k[len('backbone.'):], v) for k, v in state.items()
                           if k.startswith('backbone.'))
    if variant in ('r50', 'r101'):
        converted = OrderedDict((f'backbone.{k}', v) for k, v in backbone.items())
        return converted, {k: k for k in converted}
    # mmdet's converters skip a classifier head and a final norm silently: refuse them here
    skipped = [f'backbone.{k}' for k in backbone if k.startswith(('head', 'norm.', 'cls_token'))]
    if skipped:
        raise ConversionError(f'{len(skipped)} backbone key(s) are not part of the released '
                              f'{variant} detection backbone: {name_list(skipped)}')
    if variant == 'swin-l':
        from mmdet.models.backbones.swin import swin_converter
        converted = swin_converter(backbone)  # adds the 'backbone.' prefix
    else:
        from mmdet.models.backbones.pvt import pvt_convert
        converted = OrderedDict((f'backbone.{k}', v) for k, v in pvt_convert(backbone).items())
    # their converters read several source keys into one tensor (PVT's q + kv) and name no
    # source: the whole backbone is the source of each
    return converted, {k: 'backbone.*' for k in converted}


def convert_state_dict(state: Dict[str, torch.Tensor], variant: str
                       ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(mmmaps state dict, {mmmaps key: source key}); raises :class:`ConversionError`
    naming every source key that no rule maps."""
    converted, source_of = convert_backbone(state, variant)
    rules = [(re.compile(p), r) for p, r in _RULES]
    for source, target in _DECODERS.items():
        self_attn = any(k.startswith(f'bbox_head.{source}.blocks.0.self_attention.')
                        for k in state)
        rules += [(re.compile(p), r) for p, r in _mask_decoder_rules(source, target, self_attn)]
    unmapped = []
    for key, value in state.items():
        if key.startswith('backbone.'):
            continue
        new = _apply(rules, key)
        if new is None:
            unmapped.append(key)
            continue
        if new == 'bbox_head.stuff_queries.weight':
            content, pos = value.chunk(2, dim=1)
            value = torch.cat([pos, content], dim=1)
        if new in converted:
            raise ConversionError(f'{key} and {source_of[new]} both map to {new}')
        converted[new] = value
        source_of[new] = key
    if unmapped:
        raise ConversionError(f'{len(unmapped)} key(s) of the checkpoint are not part of the '
                              f'released Panoptic SegFormer ({SOURCE}) and were not converted: '
                              + name_list(unmapped))
    return converted, source_of


def _apply(rules: List[Tuple[re.Pattern, object]], key: str) -> Optional[str]:
    for pattern, replacement in rules:
        match = pattern.fullmatch(key)
        if match:
            return replacement(match) if callable(replacement) else \
                match.expand(replacement)
    return None


def convert(src: str, dst: str, variant: Optional[str] = None, config: Optional[str] = None,
            force: bool = False) -> dict:
    """Convert the authors' checkpoint ``src`` to an mmmaps checkpoint ``dst``.

    ``variant`` (r50, r101, swin-l, pvtv2-b5) defaults to what the keys say; a given one
    must agree. ``config`` (default: the variant's release config) is the model the result
    must fill exactly. Returns the meta block written."""
    state, source_meta = load_source_state_dict(src)
    found = detect_variant(state)
    if variant is not None and variant != found:
        raise ConversionError(f'{src}: --variant {variant} but the checkpoint holds a '
                              f'{found} backbone')
    if found not in VARIANTS:
        raise ConversionError(f'{src}: a {found} backbone is not one of the released models '
                              f'({", ".join(VARIANTS)})')
    config = config or osp.join(_CONFIGS, VARIANTS[found])
    converted, source_of = convert_state_dict(state, found)
    check_against(converted, expected_state(config), source_of,
                  f'{src} -> {osp.basename(config)}')
    meta = {CONVERTER_META_KEY: NAME, 'source': SOURCE, 'source_file': osp.basename(src),
            'source_sha256': sha256_of(src), 'variant': found,
            'config': osp.relpath(config, REPO_ROOT) if config.startswith(REPO_ROOT) else config,
            'num_tensors': len(converted),
            'source_meta': {k: source_meta[k] for k in ('epoch', 'iter', 'mmdet_version',
                                                         'mmcv_version') if k in source_meta}}
    save_converted(converted, dst, meta, force)
    return meta
