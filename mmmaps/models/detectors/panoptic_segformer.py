"""Panoptic SegFormer detector (Li et al., CVPR 2022) on mmdet's Deformable DETR."""
import copy
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdet.models.detectors import DeformableDETR
from mmdet.registry import MODELS
from mmdet.structures import OptSampleList, SampleList
from mmdet.utils import ConfigType, OptConfigType

from ..utils import add_fusion_results


@MODELS.register_module()
class PanopticSegFormer(DeformableDETR):
    """Backbone -> ChannelMapper -> deformable encoder -> location decoder -> mask decoder.

    The backbone, neck (``ChannelMapper`` to 256-d C3-C5, optionally an extra level),
    deformable transformer encoder (mmdet's ``DeformableDetrTransformerEncoder``) and the
    location decoder (mmdet's ``DeformableDetrTransformerDecoder`` with iterative
    refinement on ``num_queries`` = N_th thing queries) are mmdet's Deformable DETR
    unchanged. ``bbox_head`` is a :class:`PanopticSegFormerHead` (location-decoder
    branches, mask decoder, stuff queries); ``panoptic_fusion_head`` turns its per-query
    class logits and masks into panoptic/instance/semantic results (mask-wise merging).

    ``decoder.num_layers=0`` removes the location decoder (Table 6 row "0"): the thing
    queries enter the mask decoder directly and there is no detection loss.

    Args:
        panoptic_fusion_head (dict): e.g. ``MaskWiseMergingFusionHead`` with
            ``num_things_classes``/``num_stuff_classes``; receives ``test_cfg``.
        Others as :class:`mmdet.models.DeformableDETR`.

    ``test_cfg``: ``panoptic_on``/``instance_on``/``semantic_on`` (instance mode = only
    ``instance_on``: the stuff queries are not run), the fusion head's ``merge``/``alpha``/
    ``beta``/``t_cnf``/``t_keep``, and the head's ``mask_decoder_layer``.
    """

    def __init__(self, *args, decoder: OptConfigType = None,
                 panoptic_fusion_head: ConfigType = None, **kwargs) -> None:
        self.has_location_decoder = bool(decoder and decoder.get('num_layers', 0) > 0)
        super().__init__(*args, decoder=decoder, **kwargs)
        if panoptic_fusion_head is None:
            raise ValueError('PanopticSegFormer needs a panoptic_fusion_head config '
                             '(e.g. MaskWiseMergingFusionHead)')
        fusion = copy.deepcopy(panoptic_fusion_head)
        fusion.update(test_cfg=self.test_cfg)
        self.panoptic_fusion_head = MODELS.build(fusion)

    def _init_layers(self) -> None:
        if self.has_location_decoder:
            super()._init_layers()
            return
        # mmdet's decoder cannot be built with 0 layers: build one, then drop it and the
        # reference-point projection, which only the location decoder uses.
        self.decoder = dict(self.decoder, num_layers=1)
        super()._init_layers()
        self.decoder = nn.ModuleList()
        self.reference_points_fc = None

    def forward_transformer(self, img_feats: Tuple[Tensor],
                            batch_data_samples: OptSampleList = None,
                            padding_mask: Optional[Tensor] = None) -> Dict:
        """Deformable DETR's encoder/decoder flow; also hands the encoder tokens to the head.

        ``padding_mask`` (B, H_pad, W_pad) bool (True = padding) replaces the masks that
        mmdet derives from the samples' ``img_shape`` (python ints): the ONNX graph takes
        the image sizes as an input and builds it (mmdet drops the masks under export).

        Returns the location decoder's ``hidden_states`` (L, B, Q, C) and ``references``,
        the thing ``query_pos`` (B, Q, C), and ``memory`` (B, L_tok, C) with its padding
        mask, positional (+ level) embedding ``memory_pos`` and ``spatial_shapes``.
        """
        encoder_inputs, decoder_inputs = self.pre_transformer(img_feats, batch_data_samples)
        if padding_mask is not None:
            self._apply_padding_mask(encoder_inputs, decoder_inputs, img_feats, padding_mask)
        encoder_outputs = self.forward_encoder(**encoder_inputs)
        query_inputs, head_inputs = self.pre_decoder(**encoder_outputs)
        decoder_inputs.update(query_inputs)
        if self.has_location_decoder:
            head_inputs.update(self.forward_decoder(**decoder_inputs))
        else:
            head_inputs.update(hidden_states=decoder_inputs['query'][None],
                               references=[decoder_inputs['reference_points']])
        head_inputs.update(
            query_pos=decoder_inputs['query_pos'],
            memory=encoder_outputs['memory'],
            memory_mask=encoder_inputs['feat_mask'],
            memory_pos=encoder_inputs['feat_pos'],
            spatial_shapes=encoder_inputs['spatial_shapes'])
        return head_inputs

    def _apply_padding_mask(self, encoder_inputs: Dict, decoder_inputs: Dict,
                            img_feats: Tuple[Tensor], padding_mask: Tensor) -> None:
        """Set the token masks, positional embeddings and valid ratios of
        :meth:`pre_transformer`'s outputs from a padding mask (as mmdet derives them from
        ``img_shape``: nearest-resized per level)."""
        level_masks = [F.interpolate(padding_mask[None].float(), size=feat.shape[-2:])[0]
                       .to(torch.bool) for feat in img_feats]
        feat_pos = [self.positional_encoding(mask).flatten(2).transpose(1, 2)
                    + self.level_embed[level].view(1, 1, -1)
                    for level, mask in enumerate(level_masks)]
        feat_mask = torch.cat([mask.flatten(1) for mask in level_masks], 1)
        valid_ratios = torch.stack([self.get_valid_ratio(mask) for mask in level_masks], 1)
        encoder_inputs.update(feat_mask=feat_mask, feat_pos=torch.cat(feat_pos, 1),
                              valid_ratios=valid_ratios)
        decoder_inputs.update(memory_mask=feat_mask, valid_ratios=valid_ratios)

    def pre_decoder(self, memory: Tensor, memory_mask: Tensor,
                    spatial_shapes: Tensor) -> Tuple[Dict, Dict]:
        if self.has_location_decoder:
            return super().pre_decoder(memory, memory_mask, spatial_shapes)
        query_pos, query = self.query_embedding.weight.split(self.embed_dims, dim=1)
        batch = memory.shape[0]
        query_pos = query_pos.unsqueeze(0).expand(batch, -1, -1)
        return dict(query=query.unsqueeze(0).expand(batch, -1, -1), query_pos=query_pos,
                    memory=memory, reference_points=None), dict()

    @property
    def _with_stuff(self) -> bool:
        cfg = self.test_cfg or {}
        return cfg.get('panoptic_on', True) or cfg.get('semantic_on', False)

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        """Panoptic (``pred_panoptic_seg``), instance (``pred_instances``) and semantic
        (``pred_sem_seg``) results, as enabled in ``test_cfg``."""
        img_feats = self.extract_feat(batch_inputs)
        head_inputs = self.forward_transformer(img_feats, batch_data_samples)
        mask_cls, mask_pred = self.bbox_head.predict(
            **head_inputs, batch_data_samples=batch_data_samples, with_stuff=self._with_stuff)
        results = self.panoptic_fusion_head.predict(mask_cls, mask_pred, batch_data_samples,
                                                    rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results)

    def add_pred_to_datasample(self, data_samples: SampleList,
                               results_list: List[dict]) -> SampleList:
        return add_fusion_results(data_samples, results_list)

    def _forward(self, batch_inputs: Tensor,
                 batch_data_samples: OptSampleList = None) -> Tuple[List[Tensor]]:
        """Per-layer mask-decoder class logits and masks, without post-processing."""
        img_feats = self.extract_feat(batch_inputs)
        head_inputs = self.forward_transformer(img_feats, batch_data_samples)
        outputs = self.bbox_head.forward_tensors(**head_inputs,
                                                 batch_data_samples=batch_data_samples,
                                                 with_stuff=self._with_stuff)
        return ([self.bbox_head.class_logits(out) for out in outputs],
                [out['thing_masks'] for out in outputs])
