"""Multi-round Hungarian query filtering (Panoptic SegFormer appendix B.2)."""
from typing import List, Optional

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
    order = []
    if gt_instances is not None and len(gt_instances) and num_rounds > 0:
        order = hungarian_rounds(pred_instances, gt_instances, img_meta, assigner, num_rounds,
                                 limit=num_queries)
    selected = torch.zeros(total, dtype=torch.bool, device=scores.device)
    for matched in order:
        selected[matched] = True
    rest = confidence.masked_fill(selected, float('-inf'))
    fill = num_queries - int(selected.sum())
    if fill > 0:
        order.append(rest.topk(fill).indices)
    return torch.cat(order)[:num_queries]


def hungarian_rounds(pred_instances: InstanceData, gt_instances: InstanceData,
                     img_meta: Optional[dict], assigner, num_rounds: int,
                     limit: Optional[int] = None) -> List[Tensor]:
    """Queries matched in ``num_rounds`` rounds of Hungarian matching, one tensor per round.

    Round r matches the ground truth to the queries no earlier round took, so every
    object gets up to ``num_rounds`` distinct queries. Stops early once ``limit``
    queries are taken or none is left.
    """
    total = len(pred_instances)
    selected = torch.zeros(total, dtype=torch.bool, device=pred_instances.scores.device)
    rounds, taken = [], 0
    for _ in range(num_rounds):
        remaining = (~selected).nonzero().squeeze(1)
        if (limit is not None and taken >= limit) or remaining.numel() == 0:
            break
        result = assigner.assign(pred_instances=pred_instances[remaining],
                                 gt_instances=gt_instances, img_meta=img_meta)
        matched = remaining[result.gt_inds > 0]
        selected[matched] = True
        rounds.append(matched)
        taken += len(matched)
    return rounds


def release_thing_queries(pred_instances: InstanceData, gt_instances: InstanceData,
                          img_meta: dict, assigner, max_rounds: int,
                          max_queries: int) -> Tensor:
    """The thing queries the authors' release feeds to its mask decoder in training.

    ``min(max_rounds, max_queries // num_gt)`` rounds of Hungarian matching (at least one)
    on the location decoder's last predictions; only the matched queries are kept, so
    their number varies with the image (0 without things). Returns (K,) long indices in
    query order (the release selects them with a boolean mask).

    At least one round: with more objects than ``max_queries`` the release runs none and
    fails; here every object still gets a query where one is left.
    """
    num_gts = len(gt_instances)
    if num_gts == 0:
        return torch.zeros(0, dtype=torch.long, device=pred_instances.scores.device)
    num_rounds = max(1, min(max_rounds, max_queries // num_gts))
    return torch.cat(hungarian_rounds(pred_instances, gt_instances, img_meta, assigner,
                                      num_rounds)).sort().values
