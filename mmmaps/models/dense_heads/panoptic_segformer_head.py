"""Panoptic SegFormer head: location-decoder predictions, mask decoder, query decoupling."""
import copy
from typing import Dict, List, Optional, Tuple

import torch
from mmcv.cnn import Linear
from mmengine.model import bias_init_with_prob
from mmengine.structures import InstanceData
from torch import Tensor, nn

from mmdet.models.dense_heads import DeformableDETRHead
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmdet.utils import reduce_mean
from ..layers.attention_mask_decoder import AttentionMaskDecoder
from ..losses import MASK_TARGET_RESIZES, QueryAssignment, query_set_losses, resize_masks
from ..utils import (PanopticTargets, batch_loss_weights, build_panoptic_targets,
                     select_thing_queries)

_LOCATION_TARGETS = ('box', 'mass_center')
_GEOMETRY_COSTS = ('BBoxL1Cost', 'IoUCost', 'MassCenterL1Cost')


@MODELS.register_module()
class PanopticSegFormerHead(DeformableDETRHead):
    """Head of :class:`PanopticSegFormer` (sections 3.3-3.4 of the paper).

    It holds (1) the auxiliary branches of the location decoder (class + box, or class +
    mass centre), supervised by the Deformable-DETR detection loss and unused at
    inference; (2) the mask decoder (:class:`AttentionMaskDecoder`) whose layers classify
    the refined queries and predict masks from their attention maps; (3) the N_st
    class-fixed stuff queries. The location decoder itself belongs to the detector
    (mmdet's ``DeformableDETR``), which passes this head its reg branches for iterative
    refinement.

    Query decoupling (default): N_th thing queries from the location decoder are matched
    to things by Hungarian matching (``train_cfg.mask_assigner``: class + location + mask
    costs) and classify over the thing classes; stuff query j always stands for stuff class
    ``num_things_classes + j`` (one sigmoid logit, positive iff the class is in the image).
    ``query_decoupling=False`` is the joint-matching ablation (Table 8): one query set,
    all classes, matched to things and stuff together, also through the location decoder.

    Args:
        num_things_classes, num_stuff_classes (int): Class counts (from the dataset).
        query_decoupling (bool): Decoupled thing/stuff queries (True) or joint matching.
        location_target (str): ``'box'`` (L1 + GIoU) or ``'mass_center'`` (box-free, L1
            on mask mass centres only; Table 6 row 6*).
        mask_decoder (dict): :class:`AttentionMaskDecoder` config.
        loss_mask_cls (dict): Mask-decoder classification loss (focal, lambda_cls = 2).
        loss_mask (dict): Mask loss (Dice, lambda_seg = 1).
        thing_stuff_weighting (str | None): lambda_things / lambda_stuff from the
            ``'count'`` (default) or ``'area'`` of the things and stuff of the global batch
            (:func:`batch_loss_weights`; never 0); None = 1, 1.
        query_filter (dict | None): ``dict(num_queries=K, num_rounds=R)``: only K thing
            queries enter the mask decoder, chosen by R rounds of Hungarian matching in
            training and by location-decoder score at inference (appendix B.2).
        deep_supervision (bool): Losses on every mask-decoder layer (True) or only on the
            last (Fig. 5 "w/o ds"; the earlier layers' branches then get no gradient, so
            distributed training needs ``find_unused_parameters=True``).
        mask_target_resize (str): How the input-resolution ground-truth masks become the
            loss's and the matching cost's targets: ``'area'`` (default, area averaging:
            small segments keep their mass) or ``'bilinear'`` (the authors' release).
        Other args as mmdet's :class:`DeformableDETRHead` (``num_classes`` is derived).

    ``test_cfg.mask_decoder_layer`` (int): take the masks of that layer (1-based) and skip
    the later ones (Table 10).

    Shapes (B images, Q thing queries, S stuff queries, L tokens, 1/8 grid h x w):
    mask-decoder outputs per layer: thing_cls (B, Q, C_th), stuff_cls (B, S), thing_masks
    (B, Q, h, w), stuff_masks (B, S, h, w); ``predict`` returns class logits
    (B, Q + S, C_th + C_st) (sigmoid; -inf where a query cannot predict a class) and mask
    logits (B, Q + S, h, w) for :class:`MaskWiseMergingFusionHead`, which resizes them.
    """

    def __init__(self,
                 *args,
                 num_things_classes: int = 80,
                 num_stuff_classes: int = 53,
                 query_decoupling: bool = True,
                 location_target: str = 'box',
                 mask_decoder: dict = dict(num_layers=6),
                 loss_mask_cls: dict = dict(type='Float32FocalLoss', use_sigmoid=True, gamma=2.0,
                                            alpha=0.25, loss_weight=2.0),
                 loss_mask: dict = dict(type='DiceLoss', use_sigmoid=True, activate=True,
                                        naive_dice=True, eps=1.0, loss_weight=1.0),
                 thing_stuff_weighting: Optional[str] = 'count',
                 query_filter: Optional[dict] = None,
                 deep_supervision: bool = True,
                 mask_target_resize: str = 'area',
                 **kwargs) -> None:
        if 'num_classes' in kwargs:
            raise ValueError('PanopticSegFormerHead derives num_classes from '
                             'num_things_classes/num_stuff_classes; remove num_classes')
        if location_target not in _LOCATION_TARGETS:
            raise ValueError(f'location_target must be one of {_LOCATION_TARGETS}, '
                             f'got {location_target!r}')
        self.num_things_classes = num_things_classes
        self.num_stuff_classes = num_stuff_classes
        self.query_decoupling = query_decoupling
        self.location_target = location_target
        self.mask_decoder_cfg = copy.deepcopy(mask_decoder)
        self.num_stuff_queries = num_stuff_classes if query_decoupling else 0
        self.thing_stuff_weighting = thing_stuff_weighting if query_decoupling else None
        self.query_filter = query_filter
        self.deep_supervision = deep_supervision
        if mask_target_resize not in MASK_TARGET_RESIZES:
            raise ValueError(f'mask_target_resize must be one of {MASK_TARGET_RESIZES}, got '
                             f'{mask_target_resize!r}')
        self.mask_target_resize = mask_target_resize
        num_classes = num_things_classes + (0 if query_decoupling else num_stuff_classes)
        super().__init__(*args, num_classes=num_classes, **kwargs)
        self.loss_mask_cls = MODELS.build(loss_mask_cls)
        self.loss_mask = MODELS.build(loss_mask)
        if self.train_cfg:
            if 'mask_assigner' not in self.train_cfg:
                raise KeyError('train_cfg.mask_assigner (the thing-query Hungarian assigner '
                               'of the mask decoder) is missing')
            self._check_geometry_costs(self.train_cfg['mask_assigner'])
            self.mask_assigner = TASK_UTILS.build(self.train_cfg['mask_assigner'])
        if query_filter is not None and not self.num_pred_layer:
            raise ValueError('query_filter ranks queries by the location decoder; it needs '
                             'at least one location-decoder layer')

    @property
    def has_location_decoder(self) -> bool:
        return self.num_pred_layer > 0

    def _check_geometry_costs(self, assigner: dict) -> None:
        types = [cost['type'] for cost in assigner.get('match_costs', [])]
        geometry = [t for t in types if t in _GEOMETRY_COSTS]
        if geometry and not self.num_pred_layer:
            raise ValueError(f'train_cfg.mask_assigner uses {geometry} but the location '
                             'decoder has 0 layers, so there are no boxes/centres to match')
        wrong = {'box': 'MassCenterL1Cost', 'mass_center': 'BBoxL1Cost'}[self.location_target]
        if wrong in types:
            raise ValueError(f'train_cfg.mask_assigner uses {wrong}, which does not fit '
                             f'location_target={self.location_target!r}')

    # ------------------------------------------------------------------ layers
    def _init_layers(self) -> None:
        super()._init_layers()
        if self.location_target == 'mass_center':
            for branch in {id(b): b for b in self.reg_branches}.values():
                branch[-1] = Linear(self.embed_dims, 2)
        self._init_mask_decoder()

    def _init_mask_decoder(self) -> None:
        """The mask decoder, its class branches and the stuff queries."""
        self.mask_decoder = AttentionMaskDecoder(**self.mask_decoder_cfg)
        if self.mask_decoder.embed_dims != self.embed_dims:
            raise ValueError(f'mask_decoder embed_dims ({self.mask_decoder.embed_dims}) != '
                             f'head embed_dims ({self.embed_dims})')
        num_layers = self.mask_decoder.num_layers
        self.thing_cls_branches = nn.ModuleList(
            [Linear(self.embed_dims, self.num_classes) for _ in range(num_layers)])
        if self.num_stuff_queries:
            # (pos, content) halves, as Deformable DETR's query_embedding
            self.stuff_queries = nn.Embedding(self.num_stuff_queries, self.embed_dims * 2)
            self.stuff_cls_branches = nn.ModuleList(
                [Linear(self.embed_dims, 1) for _ in range(num_layers)])

    def init_weights(self) -> None:
        if self.has_location_decoder:
            super().init_weights()
        for p in self.mask_decoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        bias = bias_init_with_prob(0.01)
        branches = list(self.thing_cls_branches)
        if self.num_stuff_queries:
            branches += list(self.stuff_cls_branches)
        for branch in branches:
            nn.init.constant_(branch.bias, bias)

    # ------------------------------------------------------------------ forward
    def location_predictions(self, hidden_states: Tensor, references: List[Tensor]
                             ) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """(L_loc, B, Q, C) class logits and (L_loc, B, Q, 4 | 2) boxes/centres, or Nones."""
        if not self.has_location_decoder:
            return None, None
        return self(hidden_states, references)

    def _thing_inputs(self, hidden_states: Tensor, query_pos: Tensor,
                      loc_cls: Optional[Tensor], loc_coords: Optional[Tensor],
                      batch_img_metas: List[dict],
                      gts: Optional[List[InstanceData]] = None):
        """Thing queries for the mask decoder, filtered if configured.

        Returns query (B, K, C), query_pos (B, K, C), location predictions of the last
        layer (InstanceData per image, or None) and the kept indices (B, K).
        """
        query = hidden_states[-1]
        preds = None
        # the last location layer's predictions serve the matching (training) and the filter
        if self.has_location_decoder and (gts is not None or self.query_filter is not None):
            preds = [self._location_instances(loc_cls[-1, b], loc_coords[-1, b], meta)
                     for b, meta in enumerate(batch_img_metas)]
        if self.query_filter is None:
            return query, query_pos, preds, None
        keep = []
        for b, meta in enumerate(batch_img_metas):
            keep.append(select_thing_queries(
                loc_cls[-1, b], self.query_filter['num_queries'], preds[b],
                None if gts is None else gts[b], meta, self.assigner,
                self.query_filter.get('num_rounds', 0)))
        keep = torch.stack(keep)
        index = keep[..., None].expand(-1, -1, query.shape[-1])
        query, query_pos = query.gather(1, index), query_pos.gather(1, index)
        preds = [p[k] for p, k in zip(preds, keep)]
        return query, query_pos, preds, keep

    def _location_instances(self, cls_scores: Tensor, coords: Tensor,
                            img_meta: dict) -> InstanceData:
        """Last location layer of one image in the form mmdet's match costs read."""
        pred = InstanceData(scores=cls_scores)
        if self.location_target == 'box':
            img_h, img_w = img_meta['img_shape'][:2]
            factor = coords.new_tensor([img_w, img_h, img_w, img_h])
            pred.bboxes = bbox_cxcywh_to_xyxy(coords) * factor
        else:
            pred.centers = coords
        return pred

    def mask_decoder_memory(self, memory: Tensor, memory_pos: Tensor,
                            memory_mask: Optional[Tensor], spatial_shapes: Tensor,
                            num_levels: int) -> Tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
        """The encoder tokens of the first ``num_levels`` levels (the mask decoder's)."""
        if num_levels > len(spatial_shapes):
            raise ValueError(f'the mask decoder attends to {num_levels} levels but the '
                             f'encoder has {len(spatial_shapes)}')
        if num_levels == len(spatial_shapes):
            return memory, memory_pos, memory_mask, spatial_shapes
        # split by tensor sizes (not python ints) so that a traced graph stays size-agnostic
        sizes = spatial_shapes.prod(-1)
        sizes = [sizes[:num_levels].sum(), sizes[num_levels:].sum()]

        def first(tokens):
            return None if tokens is None else tokens.split(sizes, dim=1)[0]

        return first(memory), first(memory_pos), first(memory_mask), \
            spatial_shapes[:num_levels]

    def forward_mask_decoder(self, thing_query: Tensor, thing_query_pos: Tensor,
                             memory: Tensor, memory_pos: Tensor,
                             memory_mask: Optional[Tensor], spatial_shapes: Tensor,
                             with_stuff: bool = True,
                             num_layers: Optional[int] = None) -> List[Dict[str, Tensor]]:
        """Run the mask decoder on thing (+ stuff) queries; one dict per layer."""
        batch, num_things, _ = thing_query.shape
        query, query_pos = thing_query, thing_query_pos
        with_stuff = with_stuff and self.num_stuff_queries > 0
        self_attn_mask = None
        if with_stuff:
            stuff_pos, stuff_query = self.stuff_queries.weight.split(self.embed_dims, dim=1)
            query = torch.cat([query, stuff_query.expand(batch, -1, -1)], dim=1)
            query_pos = torch.cat([query_pos, stuff_pos.expand(batch, -1, -1)], dim=1)
            is_stuff = torch.arange(query.shape[1], device=query.device) >= num_things
            self_attn_mask = is_stuff[:, None] != is_stuff[None, :]
        memory, memory_pos, memory_mask, spatial_shapes = self.mask_decoder_memory(
            memory, memory_pos, memory_mask, spatial_shapes, self.mask_decoder.num_levels)
        outputs = []
        layers = self.mask_decoder(query, query_pos, memory, memory_pos, memory_mask,
                                   spatial_shapes, self_attn_mask, num_layers)
        for i, (refined, masks) in enumerate(layers):
            out = dict(thing_cls=self.thing_cls_branches[i](refined[:, :num_things]),
                       thing_masks=masks[:, :num_things])
            if with_stuff:
                out['stuff_cls'] = self.stuff_cls_branches[i](refined[:, num_things:])[..., 0]
                out['stuff_masks'] = masks[:, num_things:]
            outputs.append(out)
        return outputs

    def class_logits(self, layer_output: Dict[str, Tensor]) -> Tensor:
        """(B, Q + S, C_th + C_st) logits over all classes; -inf where a query cannot predict.

        Thing queries cover the thing columns, stuff query j only column
        ``num_things_classes + j`` (its own class). In joint matching every query covers
        every class.
        """
        thing_cls = layer_output['thing_cls']
        if not self.query_decoupling:
            return thing_cls
        batch, num_things, _ = thing_cls.shape
        stuff_cls = layer_output.get('stuff_cls')
        num_stuff = 0 if stuff_cls is None else stuff_cls.shape[1]
        logits = thing_cls.new_full(
            (batch, num_things + num_stuff, self.num_things_classes + self.num_stuff_classes),
            float('-inf'))
        logits[:, :num_things, :self.num_things_classes] = thing_cls
        if num_stuff:
            own = torch.arange(num_stuff, device=thing_cls.device)
            logits[:, num_things + own, self.num_things_classes + own] = stuff_cls
        return logits

    # ------------------------------------------------------------------ training
    def loss(self, hidden_states: Tensor, references: List[Tensor], query_pos: Tensor,
             memory: Tensor, memory_mask: Optional[Tensor], memory_pos: Tensor,
             spatial_shapes: Tensor, batch_data_samples: SampleList,
             enc_outputs_class: Optional[Tensor] = None,
             enc_outputs_coord: Optional[Tensor] = None, **kwargs) -> Dict[str, Tensor]:
        metas, targets, gts, thing_weight, stuff_weight = self.loss_targets(batch_data_samples)
        losses = {}
        loc_cls, loc_coords = self.location_predictions(hidden_states, references)
        if self.has_location_decoder:
            det_losses = self.loss_by_feat(loc_cls, loc_coords, enc_outputs_class,
                                           enc_outputs_coord, gts, metas)
            losses.update({f'loc_{k}': v for k, v in det_losses.items()})

        query, query_pos, preds, _ = self._thing_inputs(hidden_states, query_pos, loc_cls,
                                                        loc_coords, metas, gts)
        outputs = self.forward_mask_decoder(query, query_pos, memory, memory_pos, memory_mask,
                                            spatial_shapes)
        mask_size = tuple(outputs[-1]['thing_masks'].shape[-2:])
        thing_assign = self._match_things(outputs[-1], preds, gts, metas, mask_size,
                                          thing_weight if self.query_decoupling else 1.0)
        stuff_assign = self._stuff_assignments(targets, mask_size, stuff_weight) \
            if self.num_stuff_queries else None
        last = len(outputs) - 1
        for i, out in enumerate(outputs):
            if i != last and not self.deep_supervision:
                continue
            prefix = '' if i == last else f'm{i}.'
            losses[f'{prefix}loss_cls'], losses[f'{prefix}loss_dice'] = query_set_losses(
                out['thing_cls'], out['thing_masks'], thing_assign, self.loss_mask_cls,
                self.loss_mask)
            if stuff_assign is not None:
                losses[f'{prefix}loss_stuff_cls'], losses[f'{prefix}loss_stuff_dice'] = \
                    query_set_losses(out['stuff_cls'][..., None], out['stuff_masks'],
                                     stuff_assign, self.loss_mask_cls, self.loss_mask)
        return losses

    def loss_targets(self, batch_data_samples: SampleList) -> Tuple[
            List[dict], List[PanopticTargets], List[InstanceData], float, float]:
        """Per-image metas (with ``thing_loss_weight`` for the detection loss), panoptic
        targets, the ground truth the thing queries are matched to (things, or all
        segments with joint matching) and the batch's lambda_things, lambda_stuff."""
        metas = [dict(sample.metainfo) for sample in batch_data_samples]
        targets = [
            build_panoptic_targets(sample, self.num_things_classes, self.num_stuff_classes)
            for sample in batch_data_samples
        ]
        gts = [t.things if self.query_decoupling else t.joint() for t in targets]
        thing_weight, stuff_weight = batch_loss_weights(targets, self.thing_stuff_weighting)
        for meta in metas:
            meta['thing_loss_weight'] = thing_weight
        return metas, targets, gts, thing_weight, stuff_weight

    def _match_things(self, last: Dict[str, Tensor], preds: Optional[List[InstanceData]],
                      gts: List[InstanceData], metas: List[dict], mask_size,
                      weight: float) -> List[QueryAssignment]:
        """Hungarian matching of the thing (or, joint, all) queries on the last layer."""
        assignments = []
        for b, (gt, meta) in enumerate(zip(gts, metas)):
            gt_masks = resize_masks(gt.masks, mask_size, self.mask_target_resize)
            pred = InstanceData(scores=last['thing_cls'][b].detach(),
                                masks=last['thing_masks'][b].detach())
            if preds is not None:
                for key in ('bboxes', 'centers'):
                    if key in preds[b]:
                        pred[key] = preds[b][key].detach()
            gt_for_cost = InstanceData(labels=gt.labels, bboxes=gt.bboxes, centers=gt.centers,
                                       masks=gt_masks)
            result = self.mask_assigner.assign(pred_instances=pred,
                                               gt_instances=gt_for_cost, img_meta=meta)
            query_inds = (result.gt_inds > 0).nonzero().squeeze(1)
            gt_inds = result.gt_inds[query_inds] - 1
            assignments.append(QueryAssignment(query_inds, gt.labels[gt_inds], gt_masks[gt_inds],
                                               weight))
        return assignments

    def _stuff_assignments(self, targets: List[PanopticTargets], mask_size,
                           weight: float) -> List[QueryAssignment]:
        """Class-fixed assignment: stuff query j <- the segment of stuff class j, if present."""
        assignments = []
        for target in targets:
            stuff = target.stuff
            query_inds = stuff.labels - self.num_things_classes
            assignments.append(QueryAssignment(query_inds, torch.zeros_like(query_inds),
                                               resize_masks(stuff.masks, mask_size,
                                                            self.mask_target_resize),
                                               weight))
        return assignments

    # ---------------------------------------------- location-decoder detection loss
    def loss_by_feat(self, *args, **kwargs) -> Dict[str, Tensor]:
        losses = super().loss_by_feat(*args, **kwargs)
        if self.location_target == 'mass_center':
            losses = {k.replace('loss_bbox', 'loss_center'): v
                      for k, v in losses.items() if 'loss_iou' not in k}
        return losses

    def loss_by_feat_single(self, cls_scores: Tensor, bbox_preds: Tensor,
                            batch_gt_instances: List[InstanceData],
                            batch_img_metas: List[dict]) -> Tuple[Tensor, Tensor, Tensor]:
        if self.location_target == 'box':
            return super().loss_by_feat_single(cls_scores, bbox_preds, batch_gt_instances,
                                               batch_img_metas)
        num_imgs = cls_scores.size(0)
        (labels, label_weights, center_targets, center_weights, num_pos,
         num_neg) = self.get_targets([cls_scores[i] for i in range(num_imgs)],
                                     [bbox_preds[i] for i in range(num_imgs)],
                                     batch_gt_instances, batch_img_metas)
        cls_avg_factor = num_pos * 1.0 + num_neg * self.bg_cls_weight
        if self.sync_cls_avg_factor:
            cls_avg_factor = reduce_mean(cls_scores.new_tensor([cls_avg_factor]))
        loss_cls = self.loss_cls(cls_scores.reshape(-1, self.cls_out_channels),
                                 torch.cat(labels), torch.cat(label_weights),
                                 avg_factor=max(cls_avg_factor, 1))
        num_pos = torch.clamp(reduce_mean(loss_cls.new_tensor([num_pos])), min=1).item()
        loss_center = self.loss_bbox(bbox_preds.reshape(-1, 2), torch.cat(center_targets),
                                     torch.cat(center_weights), avg_factor=num_pos)
        return loss_cls, loss_center, loss_cls.new_zeros(())

    def _get_targets_single(self, cls_score: Tensor, bbox_pred: Tensor,
                            gt_instances: InstanceData, img_meta: dict) -> tuple:
        """DETR targets (boxes, or mass centres) with weights scaled by lambda_things."""
        if self.location_target == 'box':
            targets = super()._get_targets_single(cls_score, bbox_pred, gt_instances, img_meta)
        else:
            targets = self._center_targets_single(cls_score, bbox_pred, gt_instances, img_meta)
        labels, label_weights, coord_targets, coord_weights, pos_inds, neg_inds = targets
        weight = img_meta.get('thing_loss_weight', 1.0)
        return (labels, label_weights * weight, coord_targets, coord_weights * weight,
                pos_inds, neg_inds)

    def _center_targets_single(self, cls_score: Tensor, center_pred: Tensor,
                               gt_instances: InstanceData, img_meta: dict) -> tuple:
        result = self.assigner.assign(
            pred_instances=InstanceData(scores=cls_score, centers=center_pred),
            gt_instances=gt_instances, img_meta=img_meta)
        pos_inds = (result.gt_inds > 0).nonzero().squeeze(1)
        neg_inds = (result.gt_inds == 0).nonzero().squeeze(1)
        gt_inds = result.gt_inds[pos_inds] - 1
        labels = center_pred.new_full((center_pred.shape[0], ), self.num_classes,
                                      dtype=torch.long)
        labels[pos_inds] = gt_instances.labels[gt_inds]
        targets = torch.zeros_like(center_pred)
        weights = torch.zeros_like(center_pred)
        targets[pos_inds] = gt_instances.centers[gt_inds].to(targets)
        weights[pos_inds] = 1.0
        return labels, center_pred.new_ones(center_pred.shape[0]), targets, weights, \
            pos_inds, neg_inds

    # ------------------------------------------------------------------ inference
    def predict(self, hidden_states: Tensor, references: List[Tensor], query_pos: Tensor,
                memory: Tensor, memory_mask: Optional[Tensor], memory_pos: Tensor,
                spatial_shapes: Tensor, batch_data_samples: SampleList,
                with_stuff: bool = True, **kwargs) -> Tuple[Tensor, Tensor]:
        """Class logits (B, N, C_all) and mask logits (B, N, h, w) of one layer, on the
        grid of the first level the mask decoder reads (the fusion head resizes them).

        ``with_stuff=False`` (instance mode, Table 4) leaves the stuff queries out.
        """
        outputs = self.forward_tensors(hidden_states, references, query_pos, memory,
                                       memory_mask, memory_pos, spatial_shapes,
                                       batch_data_samples, with_stuff)
        last = outputs[-1]
        masks = last['thing_masks']
        if 'stuff_masks' in last:
            masks = torch.cat([masks, last['stuff_masks']], dim=1)
        return self.class_logits(last), masks

    def forward_tensors(self, hidden_states: Tensor, references: List[Tensor],
                        query_pos: Tensor, memory: Tensor, memory_mask: Optional[Tensor],
                        memory_pos: Tensor, spatial_shapes: Tensor,
                        batch_data_samples: SampleList, with_stuff: bool = True,
                        **kwargs) -> List[Dict[str, Tensor]]:
        """Mask-decoder outputs at inference (filtered queries, ``mask_decoder_layer``)."""
        metas = [sample.metainfo for sample in batch_data_samples]
        loc_cls = loc_coords = None
        if self.query_filter is not None:  # the auxiliary branches only rank queries here
            loc_cls, loc_coords = self.location_predictions(hidden_states, references)
        query, query_pos, _, _ = self._thing_inputs(hidden_states, query_pos, loc_cls,
                                                    loc_coords, metas)
        num_layers = (self.test_cfg or {}).get('mask_decoder_layer')
        return self.forward_mask_decoder(query, query_pos, memory, memory_pos, memory_mask,
                                         spatial_shapes, with_stuff, num_layers)
