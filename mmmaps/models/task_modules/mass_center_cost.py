"""Matching cost of the box-free location decoder (Panoptic SegFormer Table 6, row 6*)."""
from typing import Optional

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.models.task_modules.assigners.match_cost import BaseMatchCost
from mmdet.registry import TASK_UTILS


@TASK_UTILS.register_module()
class MassCenterL1Cost(BaseMatchCost):
    """L1 distance between predicted and ground-truth mask mass centres.

    Reads ``pred_instances.centers`` (N, 2) and ``gt_instances.centers`` (M, 2), both
    (cx, cy) normalised by the image shape; returns the (N, M) cost times ``weight``.
    """

    def __call__(self, pred_instances: InstanceData, gt_instances: InstanceData,
                 img_meta: Optional[dict] = None, **kwargs) -> Tensor:
        for name, instances in (('pred_instances', pred_instances),
                                ('gt_instances', gt_instances)):
            if 'centers' not in instances:
                raise KeyError(f'MassCenterL1Cost needs {name}.centers (normalised cx, cy)')
        return torch.cdist(pred_instances.centers, gt_instances.centers, p=1) * self.weight
