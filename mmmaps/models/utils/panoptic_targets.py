"""Per-image ground truth of Panoptic SegFormer: things, stuff and their loss weights."""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.structures import DetDataSample
from mmdet.structures.mask import mask2bbox
from mmdet.utils import reduce_mean

WEIGHTINGS = (None, 'count', 'area')


def mask_mass_centers(masks: Tensor, img_shape: Tuple[int, int]) -> Tensor:
    """Mass centres of binary masks, (n, H, W) -> (n, 2) as (cx, cy) / (img_w, img_h).

    Pixel (y, x) has centre (x + 0.5, y + 0.5), matching box coordinates; an empty mask
    gets (0, 0).
    """
    masks = masks.float()
    img_h, img_w = img_shape
    ys = torch.arange(masks.shape[-2], device=masks.device, dtype=masks.dtype) + 0.5
    xs = torch.arange(masks.shape[-1], device=masks.device, dtype=masks.dtype) + 0.5
    area = masks.sum((-2, -1)).clamp(min=1)
    cx = (masks.sum(-2) * xs).sum(-1) / area / img_w
    cy = (masks.sum(-1) * ys).sum(-1) / area / img_h
    return torch.stack([cx, cy], dim=-1)


@dataclass
class PanopticTargets:
    """Ground truth of one image, split by query set.

    things: InstanceData with labels (n_th,) in [0, num_things), bboxes (n_th, 4) xyxy in
        input pixels, masks (n_th, H_pad, W_pad) bool, centers (n_th, 2) normalised.
    stuff: InstanceData with labels (n_st,) in [num_things, num_classes) and masks
        (n_st, H_pad, W_pad) bool, one segment per stuff class present.
    """
    things: InstanceData
    stuff: InstanceData

    def joint(self) -> InstanceData:
        """Things and stuff as one set (joint matching, Table 8), stuff boxes from masks."""
        stuff_boxes = mask2bbox(self.stuff.masks).to(self.things.bboxes)
        return InstanceData(
            labels=torch.cat([self.things.labels, self.stuff.labels]),
            bboxes=torch.cat([self.things.bboxes, stuff_boxes]),
            masks=torch.cat([self.things.masks, self.stuff.masks]),
            centers=torch.cat([self.things.centers, self.stuff.centers]))


def batch_loss_weights(targets: List[PanopticTargets],
                       weighting: Optional[str]) -> Tuple[float, float]:
    """lambda_things, lambda_stuff of Eq. 3: proportions of things and stuff in the batch.

    ``'count'`` compares numbers of segments, ``'area'`` their pixel areas; None gives
    1, 1. The statistics are summed over the images and averaged over the ranks (the
    global batch, as the authors' release does), so the weights are the same on every
    rank. ``'count'`` clamps each averaged count at 1, as the release does
    (``clamp(reduce_mean(n), min=1)``): a crop without stuff still trains every stuff
    query as a negative instead of giving the whole set a weight of 0. ``'area'`` counts
    a set without ground truth in the global batch as one mean-sized segment.
    """
    if weighting is None:
        return 1.0, 1.0
    if weighting not in WEIGHTINGS:
        raise ValueError(f'thing/stuff weighting must be one of {WEIGHTINGS}, got {weighting!r}')
    stats = torch.zeros(4)
    for target in targets:
        stats += torch.tensor([
            len(target.things), len(target.stuff),
            float(target.things.masks.sum()) if len(target.things) else 0.0,
            float(target.stuff.masks.sum()) if len(target.stuff) else 0.0])
    device = targets[0].things.labels.device if targets else 'cpu'
    num_things, num_stuff, area_things, area_stuff = reduce_mean(stats.to(device)).tolist()
    if weighting == 'count':
        things, stuff = max(num_things, 1.0), max(num_stuff, 1.0)
    else:
        unit = (area_things + area_stuff) / max(num_things + num_stuff, 1e-6) or 1.0
        things, stuff = area_things or unit, area_stuff or unit
    return things / (things + stuff), stuff / (things + stuff)


def build_panoptic_targets(data_sample: DetDataSample, num_things: int,
                           num_stuff: int) -> PanopticTargets:
    """Split mmdet's panoptic ground truth (``gt_instances`` + ``gt_sem_seg``) per query set.

    Things come from ``gt_instances`` (labels, boxes, masks padded by the data
    preprocessor); stuff from the stuff labels of ``gt_sem_seg`` (mmdet's
    ``LoadPanopticAnnotations`` writes every segment's class there, 255 = void).
    """
    gt = data_sample.gt_instances
    if 'masks' not in gt:
        raise KeyError('Panoptic SegFormer needs gt_instances.masks: load annotations with '
                       'LoadPanopticAnnotations(with_mask=True) and pad them (pad_mask=True)')
    img_shape = data_sample.metainfo['img_shape'][:2]
    device = gt.labels.device
    thing_masks = gt.masks.to_tensor(dtype=torch.bool, device=device)
    things = InstanceData(labels=gt.labels.long(), bboxes=gt.bboxes.float(), masks=thing_masks,
                          centers=mask_mass_centers(thing_masks, img_shape))
    stuff_labels, stuff_masks = [], []
    if 'gt_sem_seg' in data_sample:
        semantic = data_sample.gt_sem_seg.sem_seg.squeeze(0).to(device)
        for label in torch.unique(semantic).tolist():
            if num_things <= label < num_things + num_stuff:
                stuff_labels.append(label)
                stuff_masks.append(semantic == label)
    if stuff_masks:
        masks = torch.stack(stuff_masks)
    else:
        masks = thing_masks.new_zeros((0, *thing_masks.shape[-2:]))
    stuff = InstanceData(labels=torch.tensor(stuff_labels, dtype=torch.long, device=device),
                         masks=masks, centers=mask_mass_centers(masks, img_shape))
    return PanopticTargets(things, stuff)
