"""The Dice matching cost of the authors' Panoptic SegFormer release."""
from torch import Tensor

from mmdet.models.task_modules.assigners.match_cost import DiceCost
from mmdet.registry import TASK_UTILS


@TASK_UTILS.register_module()
class SquaredDiceCost(DiceCost):
    """``1 - 2 sum(p t) / (sum(p^2) + sum(t^2) + 2 eps)``, times ``weight``.

    mmdet's ``DiceCost(naive_dice=False)`` adds ``eps`` to the numerator too; the release's
    ``DiceCost`` (``easymd/core/bbox/match_costs/match_cost.py``) adds ``eps`` = 0.001 to
    each squared sum only. The masks are used as they are (no sigmoid: the release's mask
    head ends in a ReLU).

    Shapes: ``pred_instances.masks`` (N, h, w), ``gt_instances.masks`` (M, h, w) on the
    same grid; returns (N, M).
    """

    def __init__(self, eps: float = 1e-3, weight: float = 1.0) -> None:
        super().__init__(pred_act=False, eps=eps, naive_dice=False, weight=weight)

    def _binary_mask_dice_loss(self, mask_preds: Tensor, gt_masks: Tensor) -> Tensor:
        mask_preds = mask_preds.flatten(1)
        gt_masks = gt_masks.flatten(1).float()
        numerator = 2 * mask_preds @ gt_masks.T
        denominator = (mask_preds.pow(2).sum(1)[:, None] + self.eps) + \
            (gt_masks.pow(2).sum(1)[None, :] + self.eps)
        return 1 - numerator / denominator
