"""Classification + mask losses of one query set (things or stuff) in one decoder layer."""
from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdet.utils import reduce_mean


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


def resize_masks(masks: Tensor, size: Tuple[int, int]) -> Tensor:
    """(n, H, W) binary masks -> (n, h, w) soft masks (bilinear, the prediction grid)."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=torch.float32)
    return F.interpolate(masks[:, None].float(), size=size, mode='bilinear',
                         align_corners=False)[:, 0]


def query_set_losses(cls_logits: Tensor, mask_logits: Tensor,
                     assignments: List[QueryAssignment], loss_cls, loss_mask
                     ) -> Tuple[Tensor, Tensor]:
    """Focal classification loss over all queries, Dice mask loss over positives only.

    Args:
        cls_logits: (B, Q, C) sigmoid logits of the set's classifier.
        mask_logits: (B, Q, h, w).
        assignments: one :class:`QueryAssignment` per image.
        loss_cls, loss_mask: built mmdet losses (``FocalLoss``, ``DiceLoss``).
    Returns:
        (loss_cls, loss_mask). Every query of image b is weighted by its
        ``weight`` (lambda_things or lambda_stuff); unmatched queries have no mask loss
        (appendix A.1). Both are averaged over the positives of the batch (all ranks).
    """
    batch, num_queries, num_classes = cls_logits.shape
    labels = cls_logits.new_full((batch, num_queries), num_classes, dtype=torch.long)
    weights = cls_logits.new_empty((batch, num_queries))
    pred_masks, target_masks, mask_weights = [], [], []
    for b, assignment in enumerate(assignments):
        labels[b, assignment.query_inds] = assignment.labels
        weights[b] = assignment.weight
        pred_masks.append(mask_logits[b, assignment.query_inds])
        target_masks.append(assignment.masks)
        mask_weights.append(cls_logits.new_full((len(assignment.query_inds), ),
                                                assignment.weight))
    num_pos = sum(len(a.query_inds) for a in assignments)
    avg_factor = reduce_mean(cls_logits.new_tensor(float(num_pos))).clamp(min=1).item()
    loss_c = loss_cls(cls_logits.reshape(-1, num_classes), labels.flatten(),
                      weights.flatten(), avg_factor=avg_factor)
    pred = torch.cat(pred_masks).flatten(1)
    if pred.shape[0] == 0:
        return loss_c, mask_logits.sum() * 0
    loss_m = loss_mask(pred, torch.cat(target_masks).flatten(1).to(pred), torch.cat(mask_weights),
                       avg_factor=avg_factor)
    return loss_c, loss_m
