# Panoptic SegFormer PVTv2-B5 (ImageNet-22K) on COCO panoptic, 24 epochs (Table 1):
# PQ 55.4, PQ_th 61.2, PQ_st 46.6, 104.9M params, 349G FLOPs; test-dev (Table 2): PQ 55.8.
# Optimizer and schedule as the R50 config (backbone LR x0.1).
_base_ = [
    './panoptic-segformer_r50_8xb1-24e_coco-panoptic.py',
    '../_base_/backbones/pvtv2-b5.py',
]

model = dict(backbone={{_base_.pvtv2_b5_backbone}},
             neck=dict(in_channels={{_base_.pvtv2_b5_channels}}))
