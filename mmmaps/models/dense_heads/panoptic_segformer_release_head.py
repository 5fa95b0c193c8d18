"""Panoptic SegFormer head as the authors' release builds it (the code behind PQ 49.6)."""
import copy
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import Linear
from mmengine.model import bias_init_with_prob
from mmengine.structures import InstanceData
from torch import Tensor, nn

from mmdet.models.layers.transformer import inverse_sigmoid
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_xyxy_to_cxcywh
from ..layers.attention_mask_decoder import AttentionMaskDecoder, MaskDecoderOutput
from ..losses import QueryAssignment, query_set_cls_loss, query_set_mask_loss, resize_masks
from ..utils import release_thing_queries
from .panoptic_segformer_head import PanopticSegFormerHead


@MODELS.register_module()
class PanopticSegFormerReleaseHead(PanopticSegFormerHead):
    """Panoptic SegFormer head with the structure and losses of the authors' release.

    Differences from :class:`PanopticSegFormerHead` (the paper's text), each a row of the
    table in ``configs/panoptic_segformer/README.md``:

    - two mask decoders: ``thing_mask_decoder`` on the thing queries and
      ``stuff_mask_decoder`` (with self-attention) on the stuff queries, each with its
      own depth, usually ending in a mask-only tail (:class:`AttentionMapTail`) whose
      mask is the final one;
    - training: only the thing queries that ``filter_rounds`` rounds of Hungarian
      matching on the location decoder pick enter the thing decoder (at most
      ``filter_max_queries // num_gt`` rounds), in query order; inference: the
      ``test_cfg.max_per_image`` best (query, class) pairs of the location decoder;
    - thing classes and scores come from the location decoder; the thing decoder only
      predicts masks. Its per-layer class/box branches exist as in the release
      (``thing_aux_branches``) and are trained with ``thing_aux_loss_weight`` (0 in the
      release, which keeps them in the graph with zero weight);
    - stuff classification (``loss_stuff_cls``) on every stuff-decoder layer except the
      tail; mask losses (``loss_mask``) on every layer and the tail of both decoders,
      computed after upsampling the predicted masks by ``mask_loss_upsample``
      (1/8 -> 1/4) against targets resized from the input resolution by
      ``mask_target_resize`` (the release: bilinear; also for the Dice matching cost).

    Args:
        thing_mask_decoder, stuff_mask_decoder (dict): :class:`AttentionMaskDecoder`
            configs (the release: 4 layers; 6 layers with self-attention).
        loss_stuff_cls (dict): Stuff classification loss (release: focal, 2 x 2).
        filter_rounds (int): Hungarian rounds of the training query filter: 1 (default),
            what the release does (its loop stops after the first round although it asks
            for ``min(3, 300 // num_gt)``); 3 is what its code intended.
        filter_max_queries (int | None): Caps the rounds at ``filter_max_queries // num_gt``;
            None (default): the number of thing queries (the release: ``300 // num_gt``).
        mask_loss_upsample (int): Upsampling of the predicted masks before the mask loss.
        thing_aux_branches (bool): Build the thing decoder's class and box branches.
        thing_aux_loss_weight (float): Their loss weight (release: 0).
        Others as :class:`PanopticSegFormerHead` (``mask_decoder``, ``query_filter`` and
        ``query_decoupling=False`` are not used here; ``mask_target_resize`` defaults to
        the release's ``'bilinear'``).

    Shapes (B images, K kept thing queries, S stuff queries, grid h x w of the first
    level): the decoders return per layer queries (B, K | S, C) and masks
    (B, K | S, h, w) of non-negative scores (``LevelwiseAttentionMapToMask``).
    ``forward_tensors`` returns one dict as :class:`PanopticSegFormerHead`'s layers:
    thing_cls (B, K, C_th) with -inf except each pair's class, thing_masks, stuff_cls
    (B, S), stuff_masks.
    """

    def __init__(self,
                 *args,
                 thing_mask_decoder: dict,
                 stuff_mask_decoder: dict,
                 loss_stuff_cls: dict = dict(type='Float32FocalLoss', use_sigmoid=True, gamma=2.0,
                                             alpha=0.25, loss_weight=4.0),
                 filter_rounds: int = 1,
                 filter_max_queries: Optional[int] = None,
                 mask_loss_upsample: int = 2,
                 thing_aux_branches: bool = True,
                 thing_aux_loss_weight: float = 0.0,
                 **kwargs) -> None:
        for key in ('mask_decoder', 'query_filter'):
            if kwargs.get(key) is not None:
                raise ValueError(f'PanopticSegFormerReleaseHead does not use {key}; configure '
                                 'thing_mask_decoder / stuff_mask_decoder / filter_rounds')
        if not kwargs.get('query_decoupling', True):
            raise ValueError('the release head decouples thing and stuff queries')
        if kwargs.get('location_target', 'box') != 'box':
            raise ValueError("the release head's location decoder predicts boxes")
        if thing_mask_decoder.get('layer_cfg', {}).get('self_attn', False):
            raise ValueError('the thing mask decoder runs without self-attention: the kept '
                             'thing queries are padded to the batch maximum')
        self.thing_mask_decoder_cfg = copy.deepcopy(thing_mask_decoder)
        self.stuff_mask_decoder_cfg = copy.deepcopy(stuff_mask_decoder)
        self.filter_rounds = filter_rounds
        self.filter_max_queries = filter_max_queries
        self.mask_loss_upsample = mask_loss_upsample
        self.thing_aux_branches = thing_aux_branches
        self.thing_aux_loss_weight = thing_aux_loss_weight
        kwargs.update(mask_decoder=None, query_filter=None)
        kwargs.setdefault('mask_target_resize', 'bilinear')
        super().__init__(*args, **kwargs)
        self.loss_stuff_cls = MODELS.build(loss_stuff_cls)
        if not self.has_location_decoder:
            raise ValueError('the release head needs the location decoder')

    # ------------------------------------------------------------------ layers
    def _init_mask_decoder(self) -> None:
        self.thing_mask_decoder = AttentionMaskDecoder(**self.thing_mask_decoder_cfg)
        self.stuff_mask_decoder = AttentionMaskDecoder(**self.stuff_mask_decoder_cfg)
        for name in ('thing_mask_decoder', 'stuff_mask_decoder'):
            if getattr(self, name).embed_dims != self.embed_dims:
                raise ValueError(f'{name} embed_dims ({getattr(self, name).embed_dims}) != '
                                 f'head embed_dims ({self.embed_dims})')
        # (pos, content) halves, as Deformable DETR's query_embedding
        self.stuff_queries = nn.Embedding(self.num_stuff_classes, self.embed_dims * 2)
        self.stuff_cls_branches = nn.ModuleList(
            [Linear(self.embed_dims, 1) for _ in range(self.stuff_mask_decoder.num_layers)])
        num_thing_layers = self.thing_mask_decoder.num_layers
        if self.thing_aux_branches:
            self.thing_cls_branches = nn.ModuleList(
                [Linear(self.embed_dims, self.num_classes) for _ in range(num_thing_layers)])
            self.thing_reg_branches = nn.ModuleList(
                [self._reg_branch() for _ in range(num_thing_layers)])

    def _reg_branch(self) -> nn.Sequential:
        """A box branch shaped as the location decoder's (``num_reg_fcs`` FC + ReLU, FC)."""
        layers = []
        for _ in range(self.num_reg_fcs):
            layers += [Linear(self.embed_dims, self.embed_dims), nn.ReLU()]
        return nn.Sequential(*layers, Linear(self.embed_dims, 4))

    def init_weights(self) -> None:
        super(PanopticSegFormerHead, self).init_weights()  # the location decoder branches
        for decoder in (self.thing_mask_decoder, self.stuff_mask_decoder):
            for p in decoder.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        bias = bias_init_with_prob(0.01)
        branches = list(self.stuff_cls_branches)
        if self.thing_aux_branches:
            branches += list(self.thing_cls_branches)
            for branch in self.thing_reg_branches:
                nn.init.constant_(branch[-1].weight, 0)
                nn.init.constant_(branch[-1].bias, 0)
        for branch in branches:
            nn.init.constant_(branch.bias, bias)

    # ------------------------------------------------------------------ forward
    def run_mask_decoders(self, thing_query: Tensor, memory: Tensor, memory_pos: Tensor,
                          memory_mask: Optional[Tensor], spatial_shapes: Tensor,
                          with_stuff: bool = True
                          ) -> Tuple[List[MaskDecoderOutput], List[MaskDecoderOutput]]:
        """Thing decoder on (B, K, C) thing queries (no positional embedding, as the
        release) and, if ``with_stuff``, stuff decoder on the stuff queries."""
        outputs = []
        for decoder, run in ((self.thing_mask_decoder, True),
                             (self.stuff_mask_decoder, with_stuff)):
            if not run:
                outputs.append([])
                continue
            mem, mem_pos, mem_mask, shapes = self.mask_decoder_memory(
                memory, memory_pos, memory_mask, spatial_shapes, decoder.num_levels)
            if decoder is self.thing_mask_decoder:
                query, query_pos = thing_query, torch.zeros_like(thing_query)
            else:
                stuff_pos, stuff_query = self.stuff_queries.weight.split(self.embed_dims, 1)
                batch = memory.shape[0]
                query = stuff_query.expand(batch, -1, -1)
                query_pos = stuff_pos.expand(batch, -1, -1)
            outputs.append(decoder(query, query_pos, mem, mem_pos, mem_mask, shapes))
        return outputs[0], outputs[1]

    def best_thing_pairs(self, hidden_states: Tensor, references: List[Tensor]
                         ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The ``test_cfg.max_per_image`` (K) best (query, thing class) pairs of the location
        decoder's last layer, best first: their queries (B, K, C), query indices (B, K),
        classes (B, K) and class logits (B, K)."""
        loc_cls, _ = self.location_predictions(hidden_states, references)
        cls_last = loc_cls[-1]  # (B, Q, C_th)
        _, num_queries, num_classes = cls_last.shape
        k = min((self.test_cfg or {}).get('max_per_image', 100), num_queries * num_classes)
        pair_logits, pairs = cls_last.flatten(1).topk(k, dim=1)
        query_inds = pairs // num_classes
        query = hidden_states[-1].gather(
            1, query_inds[..., None].expand(-1, -1, hidden_states.shape[-1]))
        return query, query_inds, pairs % num_classes, pair_logits

    def forward_tensors(self, hidden_states: Tensor, references: List[Tensor],
                        query_pos: Tensor, memory: Tensor, memory_mask: Optional[Tensor],
                        memory_pos: Tensor, spatial_shapes: Tensor,
                        batch_data_samples: SampleList, with_stuff: bool = True,
                        **kwargs) -> List[Dict[str, Tensor]]:
        """Inference: the ``max_per_image`` best (query, thing class) pairs of the location
        decoder through the thing decoder, the stuff queries through the stuff decoder."""
        if (self.test_cfg or {}).get('mask_decoder_layer') is not None:
            raise ValueError('test_cfg.mask_decoder_layer is not supported by the release '
                             'head (two mask decoders of different depths)')
        query, _, labels, pair_logits = self.best_thing_pairs(hidden_states, references)
        batch, k = labels.shape
        things, stuff = self.run_mask_decoders(query, memory, memory_pos, memory_mask,
                                               spatial_shapes, with_stuff)
        thing_cls = pair_logits.new_full((batch, k, self.num_things_classes), float('-inf'))
        thing_cls.scatter_(2, labels[..., None], pair_logits[..., None])
        out = dict(thing_cls=thing_cls, thing_masks=things[-1].masks)
        if stuff:
            last_query = [o.query for o in stuff if o.query is not None][-1]
            out['stuff_cls'] = self.stuff_cls_branches[-1](last_query)[..., 0]
            out['stuff_masks'] = stuff[-1].masks
        return [out]

    # ------------------------------------------------------------------ training
    def loss(self, hidden_states: Tensor, references: List[Tensor], query_pos: Tensor,
             memory: Tensor, memory_mask: Optional[Tensor], memory_pos: Tensor,
             spatial_shapes: Tensor, batch_data_samples: SampleList,
             enc_outputs_class: Optional[Tensor] = None,
             enc_outputs_coord: Optional[Tensor] = None, **kwargs) -> Dict[str, Tensor]:
        metas, targets, gts, thing_weight, stuff_weight = self.loss_targets(batch_data_samples)
        loc_cls, loc_coords = self.location_predictions(hidden_states, references)
        det_losses = self.loss_by_feat(loc_cls, loc_coords, enc_outputs_class,
                                       enc_outputs_coord, gts, metas)
        losses = {f'loc_{k}': v for k, v in det_losses.items()}

        preds = [self._location_instances(loc_cls[-1, b], loc_coords[-1, b], meta)
                 for b, meta in enumerate(metas)]
        max_queries = self.filter_max_queries or hidden_states.shape[2]
        keep = [release_thing_queries(pred, gt, meta, self.assigner, self.filter_rounds,
                                      max_queries)
                for pred, gt, meta in zip(preds, gts, metas)]
        index, valid = self._pad_indices(keep, hidden_states.device)
        query = hidden_states[-1].gather(
            1, index[..., None].expand(-1, -1, hidden_states.shape[-1]))
        things, stuff = self.run_mask_decoders(query, memory, memory_pos, memory_mask,
                                               spatial_shapes)
        grid = tuple(things[-1].masks.shape[-2:])
        loss_grid = tuple(s * self.mask_loss_upsample for s in grid)
        thing_assign, thing_gt_inds = self._match_kept_things(
            things[-1].masks, loc_cls[-1], preds, keep, gts, metas, grid, loss_grid,
            thing_weight)
        stuff_assign = self._stuff_assignments(targets, loss_grid, stuff_weight)
        for i, out in enumerate(things):
            prefix = '' if i == len(things) - 1 else f'm{i}.'
            losses[f'{prefix}loss_dice'] = query_set_mask_loss(
                self._upsample(out.masks), thing_assign, self.loss_mask)
            if out.query is not None and self.thing_aux_branches:
                losses.update(self._thing_aux_losses(i, out.query, valid, index, references,
                                                     thing_assign, thing_gt_inds, gts, metas))
        for i, out in enumerate(stuff):
            prefix = '' if i == len(stuff) - 1 else f'm{i}.'
            losses[f'{prefix}loss_stuff_dice'] = query_set_mask_loss(
                self._upsample(out.masks), stuff_assign, self.loss_mask)
            if out.query is not None:
                losses[f'{prefix}loss_stuff_cls'] = query_set_cls_loss(
                    self.stuff_cls_branches[i](out.query), stuff_assign, self.loss_stuff_cls)
        return losses

    @staticmethod
    def _pad_indices(keep: List[Tensor], device) -> Tuple[Tensor, Tensor]:
        """(B, K_max) indices (0 on padding) and (B, K_max) validity of the kept queries."""
        width = max(1, max(len(k) for k in keep))
        index = torch.zeros((len(keep), width), dtype=torch.long, device=device)
        valid = torch.zeros((len(keep), width), dtype=torch.bool, device=device)
        for b, k in enumerate(keep):
            index[b, :len(k)] = k
            valid[b, :len(k)] = True
        return index, valid

    def _upsample(self, masks: Tensor) -> Tensor:
        if self.mask_loss_upsample == 1:
            return masks
        return F.interpolate(masks, scale_factor=self.mask_loss_upsample, mode='bilinear',
                             align_corners=False)

    def _match_kept_things(self, masks: Tensor, cls_last: Tensor,
                           preds: List[InstanceData], keep: List[Tensor],
                           gts: List[InstanceData], metas: List[dict], grid, loss_grid,
                           weight: float) -> Tuple[List[QueryAssignment], List[Tensor]]:
        """Hungarian matching of the kept queries: the location decoder's classes and boxes
        and the final thing mask (``train_cfg.mask_assigner``). Also returns the matched
        ground-truth index of every positive."""
        assignments, matched_gts = [], []
        for b, (kept, gt, meta) in enumerate(zip(keep, gts, metas)):
            pred = InstanceData(scores=cls_last[b, kept].detach(),
                                bboxes=preds[b].bboxes[kept].detach(),
                                masks=masks[b, :len(kept)].detach())
            gt_for_cost = InstanceData(labels=gt.labels, bboxes=gt.bboxes,
                                       masks=resize_masks(gt.masks, grid,
                                                          self.mask_target_resize))
            result = self.mask_assigner.assign(pred_instances=pred, gt_instances=gt_for_cost,
                                               img_meta=meta)
            query_inds = (result.gt_inds > 0).nonzero().squeeze(1)
            gt_inds = result.gt_inds[query_inds] - 1
            assignments.append(QueryAssignment(
                query_inds, gt.labels[gt_inds],
                resize_masks(gt.masks[gt_inds], loss_grid, self.mask_target_resize), weight))
            matched_gts.append(gt_inds)
        return assignments, matched_gts

    def _thing_aux_losses(self, layer: int, query: Tensor, valid: Tensor, index: Tensor,
                          references: List[Tensor], assignments: List[QueryAssignment],
                          matched_gts: List[Tensor], gts: List[InstanceData],
                          metas: List[dict]) -> Dict[str, Tensor]:
        """Class and box losses of thing-decoder layer ``layer`` (the release's
        ``d{i}.loss_cls_f`` / ``loss_bbox_f`` / ``loss_iou_f``), times
        ``thing_aux_loss_weight``."""
        scale = self.thing_aux_loss_weight
        loss_cls = query_set_cls_loss(self.thing_cls_branches[layer](query), assignments,
                                      self.loss_mask_cls, valid) * scale
        # boxes refine the reference points the last location-decoder layer started from
        reference = references[-2].gather(
            1, index[..., None].expand(-1, -1, references[-2].shape[-1]))
        delta = self.thing_reg_branches[layer](query)
        boxes = (delta + inverse_sigmoid(reference)).sigmoid()  # (B, K, 4) cx cy w h
        pred, target, factors = [], [], []
        for b, (assignment, meta) in enumerate(zip(assignments, metas)):
            img_h, img_w = meta['img_shape'][:2]
            factor = boxes.new_tensor([img_w, img_h, img_w, img_h])
            gt_inds = matched_gts[b]
            pred.append(boxes[b, assignment.query_inds])
            target.append(bbox_xyxy_to_cxcywh(gts[b].bboxes[gt_inds] / factor))
            factors.append(factor.expand(len(gt_inds), 4))
        pred, target, factors = torch.cat(pred), torch.cat(target), torch.cat(factors)
        avg = max(float(len(pred)), 1.0)
        in_graph = boxes.sum() * 0  # the branch takes part even without positives (DDP)
        loss_bbox = (self.loss_bbox(pred, target, avg_factor=avg) + in_graph) * scale
        loss_iou = self.loss_iou(bbox_cxcywh_to_xyxy(pred) * factors,
                                 bbox_cxcywh_to_xyxy(target) * factors, avg_factor=avg) * scale
        return {f't{layer}.loss_cls': loss_cls, f't{layer}.loss_bbox': loss_bbox,
                f't{layer}.loss_iou': loss_iou}
