"""Mask-wise merging post-processing (Panoptic SegFormer section 3.5, Algorithm 1)."""
from typing import Dict, List, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.structures import InstanceData, PixelData
from torch import Tensor

from mmdet.evaluation.functional import INSTANCE_OFFSET
from mmdet.models.seg_heads.panoptic_fusion_heads import MaskFormerFusionHead
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.structures.mask import mask2bbox

Threshold = Union[float, Dict[str, float]]
_MERGES = ('mask_wise', 'pixel_argmax', 'pixel_argmax_prob')
_MASK_ACTIVATIONS = ('sigmoid', 'identity')
_MASK_RESIZES = ('crop_then_resize', 'one_step')


@MODELS.register_module()
class MaskWiseMergingFusionHead(MaskFormerFusionHead):
    """Turns per-query class scores and masks into panoptic, instance and semantic results.

    ``test_cfg.merge`` selects the panoptic post-processing:

    - ``'mask_wise'`` (default, PSF Algorithm 1): each query's confidence is
      ``s_i = p_i^alpha * mean(m_i[m_i > mask_thr])^beta``; queries with
      ``s_i < t_cnf`` are dropped; in decreasing ``s_i`` order each binary mask
      ``m_i > mask_thr`` paints the pixels no earlier mask painted, and is dropped
      (paints nothing) when that kept part is less than ``t_keep`` of its area.
      Things get unique instance ids, all stuff pixels of one class form one segment.
    - ``'pixel_argmax'`` ("(p)" of PSF Table 7 / Table B.2, DETR's rule): the queries
      with class probability ``p_i >= t_cnf`` are kept and every pixel goes to the
      kept query with the largest mask probability ``m_i`` (no ``mask_thr``, no
      ``t_keep``; equal probabilities go to the larger ``p_i``). Things get instance
      ids in order of decreasing ``p_i``, all stuff pixels of one class form one
      segment; pixels are void only when no query is kept.
    - ``'pixel_argmax_prob'`` ("(p*)"): mmdet's MaskFormer post-processing (class
      probability times mask probability, then argmax); softmax classes and
      sigmoid masks only.

    Args (``test_cfg``):
        merge (str): One of the above.
        alpha, beta (float): Exponents of the class and mask scores (1, 2).
        t_cnf (float | dict): Confidence threshold (0.25), or
            ``dict(thing=..., stuff=...)``.
        t_keep (float | dict): Kept-fraction threshold (0.6), same forms.
        mask_thr (float): Binarisation threshold of mask probabilities (0.5), for
            the mask-wise merging and the instance masks.
        mask_area_offset (float): The mask score of Eq. 6 is
            ``sum(m[m > thr]) / max(|m > thr| + offset, 1)``: 0 (default) is the mean of
            the paper; the authors' release divides by ``|m > thr| + 1``.
        mask_resize (str): How ``mask_pred`` (at any resolution covering the padded
            batch input, e.g. the head's 1/4 or 1/8 grid) becomes a mask of the image:
            ``'crop_then_resize'`` (default, mmdet's): upsampled to the padded input,
            cropped to ``img_shape`` and, with ``rescale``, resized to ``ori_shape``;
            ``'one_step'`` (the authors' Panoptic SegFormer release): the part of the
            grid that covers the image resized to ``ori_shape`` (``img_shape`` without
            ``rescale``) in one bilinear step.
        cls_activation (str): ``'softmax'`` (last column is "no object", as in
            Mask2Former/MAPS) or ``'sigmoid'`` (one column per class, as in
            Panoptic SegFormer).
        mask_activation (str): ``'sigmoid'`` (default: ``mask_pred`` are logits)
            or ``'identity'`` (``mask_pred`` are already mask probabilities, e.g.
            the released Panoptic SegFormer weights, whose mask head ends in a
            ReLU and whose masks are thresholded at 0.5 directly; values may
            exceed 1, and so may the mask score of Eq. 6).
        max_per_image (int): Instances kept for instance results (100).
        panoptic_on, instance_on, semantic_on (bool): Which results to return;
            the semantic map (void = 255) is derived from the panoptic one.
            mmdet's MaskFormer detectors refuse ``sem_results``; with them the
            mIoU comes from ``PanopticSemSegMetric`` on the same panoptic map.

    Shapes: ``mask_cls`` (Q, C + 1) or (Q, C), ``mask_pred`` (Q, H, W) at the image's
    resolution (``panoptic_postprocess``/``instance_postprocess``); ``predict`` takes
    (B, Q, h, w) at any resolution and resizes them (``mask_resize``).
    The panoptic map uses mmdet's encoding ``class + instance * INSTANCE_OFFSET``
    with ``num_classes`` for void. Runs on CPU and GPU, with zero queries or
    empty masks; the only loop is over queries (no per-pixel Python, no host
    synchronisation inside it).
    """

    # ------------------------------------------------------------------ scores
    def _cfg(self, key, default):
        return (self.test_cfg or {}).get(key, default)

    def class_probs(self, mask_cls: Tensor) -> Tensor:
        """(Q, num_classes) class probabilities without the no-object column."""
        activation = self._cfg('cls_activation', 'softmax')
        if activation == 'softmax':
            if mask_cls.shape[-1] != self.num_classes + 1:
                raise ValueError(f'softmax scores need {self.num_classes + 1} columns (classes '
                                 f'+ no-object), got {mask_cls.shape[-1]}')
            return F.softmax(mask_cls, dim=-1)[:, :-1]
        if activation == 'sigmoid':
            if mask_cls.shape[-1] != self.num_classes:
                raise ValueError(f'sigmoid scores need {self.num_classes} columns, got '
                                 f'{mask_cls.shape[-1]}')
            return mask_cls.sigmoid()
        raise ValueError(f"cls_activation must be 'softmax' or 'sigmoid', got {activation!r}")

    def _per_class(self, value: Threshold, labels: Tensor,
                   dtype: torch.dtype = torch.float32) -> Tensor:
        if isinstance(value, dict):
            thing = torch.as_tensor(float(value['thing']), dtype=dtype, device=labels.device)
            stuff = torch.as_tensor(float(value['stuff']), dtype=dtype, device=labels.device)
            return torch.where(labels < self.num_things_classes, thing, stuff)
        return torch.full(labels.shape, float(value), dtype=dtype, device=labels.device)

    def _mask_activation(self) -> str:
        activation = self._cfg('mask_activation', 'sigmoid')
        if activation not in _MASK_ACTIVATIONS:
            raise ValueError(f'test_cfg.mask_activation must be one of {_MASK_ACTIVATIONS}, '
                             f'got {activation!r}')
        return activation

    def _mask_probs(self, mask_pred: Tensor) -> Tensor:
        """Mask probabilities (..., H, W) of ``mask_pred`` (..., H, W), per
        ``test_cfg.mask_activation``."""
        if self._mask_activation() == 'sigmoid':
            return mask_pred.sigmoid()
        return mask_pred

    def _mask_score(self, prob: Tensor) -> Tuple[Tensor, Tensor]:
        """``(mean(m[m > thr]), m > thr)`` of one mask probability map (H, W); the mean's
        denominator is ``max(area + mask_area_offset, 1)``."""
        binary = prob > self._cfg('mask_thr', 0.5)
        area = torch.count_nonzero(binary) + self._cfg('mask_area_offset', 0)
        return torch.where(binary, prob, 0).sum() / area.clamp_min(1), binary

    def _score(self, probs: Tensor, mask_scores) -> Tensor:
        """``p^alpha * mask_score^beta`` (zeros-shaped when there are no queries)."""
        if len(mask_scores) == 0:
            return probs.new_zeros(probs.shape)
        return probs.pow(self._cfg('alpha', 1.0)) * torch.stack(list(mask_scores)).pow(
            self._cfg('beta', 2.0))

    def _candidates(self, mask_cls: Tensor, mask_pred: Tensor):
        """Queries that reach ``t_cnf``: ``(scores (K,), labels (K,), K binary masks (H, W))``.

        A sigmoid mask score is at most 1, so with ``beta >= 0`` ``s_i <= p_i^alpha``:
        queries below the threshold on class probability alone are dropped before
        their full-size masks are touched (same result, far less work with 100-300
        queries). The rest are scored one mask at a time, which avoids copying them all.
        """
        probs, labels = self.class_probs(mask_cls).max(dim=-1)
        t_cnf = self._per_class(self._cfg('t_cnf', 0.25), labels)
        if self._mask_activation() == 'sigmoid' and self._cfg('beta', 2.0) >= 0:
            alive = torch.nonzero(probs.pow(self._cfg('alpha', 1.0)) >= t_cnf)[:, 0]
        else:  # masks over 1 (identity) or beta < 0 can lift s_i above p_i^alpha
            alive = torch.arange(len(probs), device=probs.device)
        scored = [self._mask_score(self._mask_probs(mask_pred[query]))
                  for query in alive.tolist()]
        if not scored:
            empty = mask_pred.new_zeros((0, ) + mask_pred.shape[-2:], dtype=torch.bool)
            return probs[:0], labels[:0], empty
        scores = self._score(probs[alive], [score for score, _ in scored])
        keep = torch.nonzero(scores >= t_cnf[alive])[:, 0]
        return scores[keep], labels[alive][keep], [scored[i][1] for i in keep.tolist()]

    def _paint(self, panoptic: Tensor, owner: Tensor, labels: Tensor,
               accepted: Tensor) -> Tensor:
        """Write segment ids where ``owner`` (index into ``labels``, -1 = none) is set:
        things get instance ids 1, 2, ... in order of acceptance, stuff its class id."""
        is_thing = labels < self.num_things_classes
        instance_ids = torch.cumsum((accepted & is_thing).long(), 0)
        segment_of = torch.where(is_thing, labels + instance_ids * INSTANCE_OFFSET, labels)
        return torch.where(owner >= 0, segment_of[owner.clamp_min(0)].int(), panoptic)

    # ------------------------------------------------------------------ panoptic
    def merge_masks(self, scores: Tensor, labels: Tensor, masks) -> Tensor:
        """Algorithm 1 on binary ``masks`` ((Q, H, W) or a list of (H, W)): (H, W) int32
        panoptic map."""
        if isinstance(masks, (list, tuple)) and not masks:
            raise ValueError('merge_masks needs at least one mask (or a (0, H, W) tensor)')
        height, width = masks[0].shape[-2:] if len(masks) else masks.shape[-2:]
        device = scores.device
        void = self.num_classes
        panoptic = torch.full((height, width), void, dtype=torch.int32, device=device)
        kept = torch.nonzero(scores >= self._per_class(self._cfg('t_cnf', 0.25), labels))[:, 0]
        if len(kept) == 0:
            return panoptic
        # descending score; equal scores keep query order
        order = kept[torch.argsort(scores[kept], descending=True, stable=True)]
        labels = labels[order]
        # a mask is dropped when more than 1 - t_keep of it is painted already; in float64,
        # so that a fraction exactly at the threshold (2 of 5 pixels) is kept as in Python
        max_painted = 1 - self._per_class(self._cfg('t_keep', 0.6), labels, torch.float64)
        area = torch.stack([torch.count_nonzero(masks[q]) for q in order.tolist()])
        painted = torch.zeros((height, width), dtype=torch.bool, device=device)
        owner = torch.full((height, width), -1, dtype=torch.long, device=device)
        accepted = torch.zeros(len(order), dtype=torch.bool, device=device)
        for i, query in enumerate(order.tolist()):
            new = masks[query] & ~painted
            overlap = (area[i] - torch.count_nonzero(new)).double() / area[i].clamp_min(1)
            ok = (area[i] > 0) & (overlap <= max_painted[i])
            new &= ok
            owner.masked_fill_(new, i)
            painted |= new
            accepted[i] = ok
        return self._paint(panoptic, owner, labels, accepted)

    def panoptic_postprocess(self, mask_cls: Tensor, mask_pred: Tensor) -> PixelData:
        """(1, H, W) int32 panoptic map of ``mask_cls`` (Q, C[+1]), ``mask_pred`` (Q, H, W)."""
        merge = self._cfg('merge', 'mask_wise')
        if merge not in _MERGES:
            raise ValueError(f'test_cfg.merge must be one of {_MERGES}, got {merge!r}')
        mask_activation = self._mask_activation()
        if merge == 'pixel_argmax_prob':
            if self._cfg('cls_activation', 'softmax') != 'softmax':
                raise ValueError("'pixel_argmax_prob' is mmdet's softmax post-processing")
            if mask_activation != 'sigmoid':
                raise ValueError("'pixel_argmax_prob' is mmdet's post-processing of mask "
                                 "logits: it needs mask_activation='sigmoid'")
            return super().panoptic_postprocess(mask_cls, mask_pred)
        if merge == 'mask_wise':
            scores, labels, binaries = self._candidates(mask_cls, mask_pred)
            if len(binaries) == 0:
                binaries = mask_pred.new_zeros((0, ) + mask_pred.shape[-2:], dtype=torch.bool)
            return PixelData(sem_seg=self.merge_masks(scores, labels, binaries)[None])
        return PixelData(sem_seg=self._pixel_argmax(mask_cls, mask_pred)[None])

    def _pixel_argmax(self, mask_cls: Tensor, mask_pred: Tensor) -> Tensor:
        """"(p)": (H, W) int32 panoptic map; the queries with ``p_i >= t_cnf`` compete
        per pixel on mask probability alone."""
        probs, labels = self.class_probs(mask_cls).max(dim=-1)
        panoptic = torch.full(mask_pred.shape[-2:], self.num_classes, dtype=torch.int32,
                              device=mask_pred.device)
        kept = torch.nonzero(probs >= self._per_class(self._cfg('t_cnf', 0.25), labels))[:, 0]
        if len(kept) == 0:
            return panoptic
        # descending p_i, so that argmax ties and the instance ids follow the class score
        order = kept[torch.argsort(probs[kept], descending=True, stable=True)]
        winner = self._mask_probs(mask_pred[order]).argmax(0)
        won = torch.bincount(winner.flatten(), minlength=len(order)) > 0
        return self._paint(panoptic, winner, labels[order], won)

    # ------------------------------------------------------------------ instances
    def instance_postprocess(self, mask_cls: Tensor, mask_pred: Tensor) -> InstanceData:
        """Top ``max_per_image`` (query, thing class) pairs, scored class prob x mask score
        ``mean(m[m > mask_thr])``; masks (N, H, W) are ``m > mask_thr``.

        ``test_cfg.instance_classes``: ``'all'`` (default, mmdet/detectron2 Mask2Former) takes
        the top pairs over every class and then drops stuff pairs; ``'things'`` takes them
        over the thing classes only, so stuff queries cannot use up the slots (Panoptic
        SegFormer's instance results come from its thing queries).

        ``test_cfg.instance_score``: ``'class_x_mask'`` (default, mmdet's) scores a pair
        ``p * mean(m[m > mask_thr])``; ``'merging'`` (the authors' Panoptic SegFormer
        release) with the score of the mask-wise merging, Eq. 6 with ``alpha``, ``beta``
        and ``mask_area_offset``.
        """
        instance_score = self._cfg('instance_score', 'class_x_mask')
        if instance_score not in ('class_x_mask', 'merging'):
            raise ValueError(f"test_cfg.instance_score must be 'class_x_mask' or 'merging', "
                             f'got {instance_score!r}')
        max_per_image = self._cfg('max_per_image', 100)
        instance_classes = self._cfg('instance_classes', 'all')
        if instance_classes not in ('all', 'things'):
            raise ValueError(f"test_cfg.instance_classes must be 'all' or 'things', got "
                             f'{instance_classes!r}')
        probs = self.class_probs(mask_cls)
        if instance_classes == 'things':
            probs = probs[:, :self.num_things_classes]
        num_queries, num_columns = probs.shape
        labels = torch.arange(num_columns, device=probs.device).repeat(num_queries)
        flat = probs.flatten()
        scores, top = flat.topk(min(max_per_image, flat.numel()), sorted=False)
        labels, queries = labels[top], top // num_columns
        thing = labels < self.num_things_classes
        scores, labels, queries = scores[thing], labels[thing], queries[thing]
        mask_probs = self._mask_probs(mask_pred[queries])
        masks = mask_probs > self._cfg('mask_thr', 0.5)
        results = InstanceData()
        if instance_score == 'merging':
            results.scores = self._score(scores, [self._mask_score(m)[0] for m in mask_probs])
        else:
            mask_scores = (mask_probs * masks).flatten(1).sum(1) / (
                masks.flatten(1).sum(1) + 1e-6)
            results.scores = scores * mask_scores
        results.bboxes = mask2bbox(masks)
        results.labels = labels
        results.masks = masks
        return results

    # ------------------------------------------------------------------ resize
    def resize_masks(self, mask_pred: Tensor, img_meta: dict, rescale: bool) -> Tensor:
        """(Q, h, w) masks covering the padded batch input -> (Q, H, W) masks of the image
        (``ori_shape`` with ``rescale``, else ``img_shape``), per ``test_cfg.mask_resize``.

        Bilinear, ``align_corners=False`` throughout. ``'one_step'`` on a padded image
        resizes the fraction ``img_shape / batch_input_shape`` of the grid: the same
        bilinear rule, sampled at those positions (``grid_sample``)."""
        mode = self._cfg('mask_resize', 'crop_then_resize')
        if mode not in _MASK_RESIZES:
            raise ValueError(f'test_cfg.mask_resize must be one of {_MASK_RESIZES}, got '
                             f'{mode!r}')
        img_h, img_w = img_meta['img_shape'][:2]
        out_size = tuple(img_meta['ori_shape'][:2]) if rescale else (img_h, img_w)
        # without batch_input_shape the masks are taken to be of the padded input already
        padded = tuple(img_meta.get('batch_input_shape', mask_pred.shape[-2:]))
        if mode == 'crop_then_resize':
            if tuple(mask_pred.shape[-2:]) != padded:
                mask_pred = _bilinear(mask_pred, padded)
            mask_pred = mask_pred[:, :img_h, :img_w]
            return _bilinear(mask_pred, out_size) if rescale else mask_pred
        if 'batch_input_shape' not in img_meta:
            raise KeyError("test_cfg.mask_resize='one_step' needs the data sample's "
                           'batch_input_shape (set by the data preprocessor): the masks cover '
                           'the padded input')
        pad_h, pad_w = padded
        if (img_h, img_w) == (pad_h, pad_w):
            return _bilinear(mask_pred, out_size)
        return _bilinear_part(mask_pred, (img_h / pad_h, img_w / pad_w), out_size)

    # ------------------------------------------------------------------ predict
    def predict(self, mask_cls_results: Tensor, mask_pred_results: Tensor,
                batch_data_samples: SampleList, rescale: bool = False, **kwargs) -> List[dict]:
        """Per image: masks resized (:meth:`resize_masks`), then ``pan_results``,
        ``ins_results`` and ``sem_results`` (derived from the panoptic map) as
        ``test_cfg`` enables them.

        Args:
            mask_cls_results: (B, Q, C[+1]) class logits.
            mask_pred_results: (B, Q, h, w) mask logits (or probabilities), at any
                resolution that covers the padded batch input.
        """
        panoptic_on = self._cfg('panoptic_on', True)
        semantic_on = self._cfg('semantic_on', False)
        instance_on = self._cfg('instance_on', False)
        results = []
        for mask_cls, mask_pred, sample in zip(mask_cls_results, mask_pred_results,
                                               batch_data_samples):
            mask_pred = self.resize_masks(mask_pred, sample.metainfo, rescale)
            result = dict()
            if panoptic_on or semantic_on:
                panoptic = self.panoptic_postprocess(mask_cls, mask_pred)
                if panoptic_on:
                    result['pan_results'] = panoptic
                if semantic_on:
                    semantic = (panoptic.sem_seg % INSTANCE_OFFSET).long()
                    semantic[panoptic.sem_seg == self.num_classes] = 255
                    result['sem_results'] = PixelData(sem_seg=semantic)
            if instance_on:
                result['ins_results'] = self.instance_postprocess(mask_cls, mask_pred)
            results.append(result)
        return results


def _bilinear(masks: Tensor, size: Tuple[int, int]) -> Tensor:
    return F.interpolate(masks[:, None], size=size, mode='bilinear', align_corners=False)[:, 0]


def _bilinear_part(masks: Tensor, fraction: Tuple[float, float],
                   size: Tuple[int, int]) -> Tensor:
    """The top-left ``fraction`` (of the height, of the width) of ``masks`` (Q, h, w) resized
    to ``size`` with ``F.interpolate``'s bilinear rule (``align_corners=False``): output
    pixel ``i`` reads input position ``(i + 0.5) * extent / size - 0.5`` (in cells),
    clamped to ``[0, extent - 1]``, where ``extent`` is the part's size in cells (the
    same as ``F.interpolate`` of the part when the part is whole cells)."""
    h, w = masks.shape[-2:]
    coords = []
    for n_out, n_in, frac in zip(size, (h, w), fraction):
        extent = max(n_in * frac, 1.0)
        centre = (torch.arange(n_out, dtype=torch.float64, device=masks.device) + 0.5)
        src = (centre * (extent / n_out) - 0.5).clamp(0, extent - 1)
        coords.append((src + 0.5) / n_in * 2 - 1)  # grid_sample's align_corners=False units
    ys, xs = torch.meshgrid(*coords, indexing='ij')
    grid = torch.stack([xs, ys], -1).to(masks.dtype)[None]
    return F.grid_sample(masks[None], grid, mode='bilinear', padding_mode='border',
                         align_corners=False)[0]
