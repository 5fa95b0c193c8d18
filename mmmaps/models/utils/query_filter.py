"""Multi-round Hungarian query filtering (Panoptic SegFormer appendix B.2)."""
from typing import Optional

import torch
from mmengine.structures import InstanceData
from torch import Tensor


def select_thing_queries(scores: Tensor, num_queries: int,
                         pred_instances: Optional[InstanceData] = None,
                         gt_instances: Optional[InstanceData] = None,
                         img_meta: Optional[dict] = None, assigner=None,
                         num_rounds: int = 0) -> Tensor:
    """Indices of the ``num_queries`` most promising thing queries of one image.

    Training (``num_rounds`` > 0 and ground truth given): round r runs the Hungarian
    ``assigner`` between the queries not yet selected and the ground truth, and selects the
    matched queries; after ``num_rounds`` rounds the rest is filled with the
    highest-scoring remaining queries. Inference (no ground truth): the top scores.

    Args:
        scores: (Q, C) location-decoder class logits of the last layer.
        num_queries: K, the number of queries kept (all are kept if K >= Q).
        pred_instances: (Q,) predictions the assigner reads (scores, bboxes or centers).
    Returns:
        (K,) long tensor: matched queries first (round order), then by score.
    """
    total = scores.shape[0]
    if num_queries >= total:
        return torch.arange(total, device=scores.device)
    confidence = scores.detach().sigmoid().max(-1).values
    selected = torch.zeros(total, dtype=torch.bool, device=scores.device)
    order = []
    if gt_instances is not None and len(gt_instances) and num_rounds > 0:
        for _ in range(num_rounds):
            remaining = (~selected).nonzero().squeeze(1)
            if len(order) >= num_queries or remaining.numel() == 0:
                break
            result = assigner.assign(pred_instances=pred_instances[remaining],
                                     gt_instances=gt_instances, img_meta=img_meta)
            matched = remaining[result.gt_inds > 0]
            selected[matched] = True
            order.append(matched)
    rest = confidence.masked_fill(selected, float('-inf'))
    fill = num_queries - int(selected.sum())
    if fill > 0:
        order.append(rest.topk(fill).indices)
    return torch.cat(order)[:num_queries]
