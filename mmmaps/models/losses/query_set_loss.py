"""Classification + mask losses of one query set (things or stuff) in one decoder layer."""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdet.utils import reduce_mean


MASK_TARGET_RESIZES = ('area', 'bilinear')


@dataclass
class QueryAssignment:
    """Which queries of one image are positive and what they must predict.

    query_inds (P,) long: positive queries; labels (P,) long: their class column in the
    set's classifier; masks (P, h, w) float: their target masks at the prediction
    resolution; weight: the image's lambda (Eq. 3) for this query set.
    """
    query_inds: Tensor
    labels: Tensor
    masks: Tensor
    weight: float


def resize_masks(masks: Tensor, size: Tuple[int, int], mode: str = 'area') -> Tensor:
    """(n, H, W) binary masks -> (n, h, w) soft masks on the prediction grid.

    ``'area'`` (default): area averaging, each target cell holds the fraction of its input
    pixels that the mask covers, so a segment keeps its mass (``sum * H * W / (h * w)`` =
    its pixel count) however small it is. ``'bilinear'`` (the authors' Panoptic SegFormer
    release): bilinear sampling without antialiasing (``align_corners=False``), which reads
    only a few input pixels per cell and turns a 4x4-pixel object into an all-zero target
    at 1/8 in most positions.
    """
    if mode not in MASK_TARGET_RESIZES:
        raise ValueError(f'mask target resize must be one of {MASK_TARGET_RESIZES}, got '
                         f'{mode!r}')
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=torch.float32)
    extra = dict(align_corners=False) if mode == 'bilinear' else {}
    return F.interpolate(masks[:, None].float(), size=size, mode=mode, **extra)[:, 0]


def query_set_cls_loss(cls_logits: Tensor, assignments: List[QueryAssignment], loss_cls,
                       valid: Optional[Tensor] = None) -> Tensor:
    """Focal classification loss over all queries of a set (positives and negatives).

    Args:
        cls_logits: (B, Q, C) sigmoid logits of the set's classifier.
        assignments: one :class:`QueryAssignment` per image.
        loss_cls: a built mmdet ``FocalLoss``.
        valid: (B, Q) bool, False on padding queries (no loss), or None.
    Every query of image b is weighted by its assignment's ``weight``; the loss is
    averaged over the positives of the batch (all ranks).
    """
    batch, num_queries, num_classes = cls_logits.shape
    labels = cls_logits.new_full((batch, num_queries), num_classes, dtype=torch.long)
    weights = cls_logits.new_empty((batch, num_queries))
    for b, assignment in enumerate(assignments):
        labels[b, assignment.query_inds] = assignment.labels
        weights[b] = assignment.weight
    if valid is not None:
        weights = weights * valid
    return loss_cls(cls_logits.reshape(-1, num_classes), labels.flatten(), weights.flatten(),
                    avg_factor=_num_positives(assignments, cls_logits))


def query_set_mask_loss(mask_logits: Tensor, assignments: List[QueryAssignment],
                        loss_mask) -> Tensor:
    """Mask loss (Dice) of the positive queries only (appendix A.1), weighted per image by
    the assignment's ``weight`` and averaged over the positives of the batch (all ranks).

    ``mask_logits`` (B, Q, h, w) must be on the grid of the assignments' target masks.
    """
    pred = torch.cat([mask_logits[b, a.query_inds] for b, a in enumerate(assignments)])
    if pred.shape[0] == 0:
        return mask_logits.sum() * 0
    targets = torch.cat([a.masks for a in assignments]).flatten(1).to(pred)
    weights = torch.cat([pred.new_full((len(a.query_inds), ), a.weight) for a in assignments])
    return loss_mask(pred.flatten(1), targets, weights,
                     avg_factor=_num_positives(assignments, mask_logits))


def _num_positives(assignments: List[QueryAssignment], like: Tensor) -> float:
    num_pos = sum(len(a.query_inds) for a in assignments)
    return reduce_mean(like.new_tensor(float(num_pos))).clamp(min=1).item()


def query_set_losses(cls_logits: Tensor, mask_logits: Tensor,
                     assignments: List[QueryAssignment], loss_cls, loss_mask
                     ) -> Tuple[Tensor, Tensor]:
    """(classification loss, mask loss) of one query set in one decoder layer: see
    :func:`query_set_cls_loss` and :func:`query_set_mask_loss`."""
    return (query_set_cls_loss(cls_logits, assignments, loss_cls),
            query_set_mask_loss(mask_logits, assignments, loss_mask))
