"""Per-image ground truth of Panoptic SegFormer: things, stuff and their loss weights."""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.structures import DetDataSample
from mmdet.structures.mask import mask2bbox

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
    thing_weight, stuff_weight: lambda_things and lambda_stuff of Eq. 3 for this image.
    """
    things: InstanceData
    stuff: InstanceData
    thing_weight: float
    stuff_weight: float

    def joint(self) -> InstanceData:
        """Things and stuff as one set (joint matching, Table 8), stuff boxes from masks."""
        stuff_boxes = mask2bbox(self.stuff.masks).to(self.things.bboxes)
        return InstanceData(
            labels=torch.cat([self.things.labels, self.stuff.labels]),
            bboxes=torch.cat([self.things.bboxes, stuff_boxes]),
            masks=torch.cat([self.things.masks, self.stuff.masks]),
            centers=torch.cat([self.things.centers, self.stuff.centers]))


def loss_weights(things: InstanceData, stuff: InstanceData,
                 weighting: Optional[str]) -> Tuple[float, float]:
    """lambda_things, lambda_stuff: proportions of things and stuff (summing to 1), or 1, 1.

    ``'count'`` uses numbers of segments, ``'area'`` their pixel areas; an image without
    any segment gets 0.5 / 0.5.
    """
    if weighting is None:
        return 1.0, 1.0
    if weighting == 'count':
        num_things, num_stuff = float(len(things)), float(len(stuff))
    elif weighting == 'area':
        num_things = float(things.masks.sum()) if len(things) else 0.0
        num_stuff = float(stuff.masks.sum()) if len(stuff) else 0.0
    else:
        raise ValueError(f'thing/stuff weighting must be one of {WEIGHTINGS}, got {weighting!r}')
    total = num_things + num_stuff
    if total == 0:
        return 0.5, 0.5
    return num_things / total, num_stuff / total


def build_panoptic_targets(data_sample: DetDataSample, num_things: int, num_stuff: int,
                           weighting: Optional[str] = 'count') -> PanopticTargets:
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
    thing_weight, stuff_weight = loss_weights(things, stuff, weighting)
    return PanopticTargets(things, stuff, thing_weight, stuff_weight)
