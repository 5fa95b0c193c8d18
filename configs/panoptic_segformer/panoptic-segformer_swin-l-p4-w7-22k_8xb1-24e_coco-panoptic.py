# Panoptic SegFormer Swin-L (ImageNet-22K, window 7) on COCO panoptic, 24 epochs (Table 1):
# PQ 55.8, PQ_th 61.7, PQ_st 46.9, 221.4M params, 816G FLOPs; test-dev (Table 2): PQ 56.2.
# Optimizer and schedule as the R50 config (backbone LR x0.1).
_base_ = [
    './panoptic-segformer_r50_8xb1-24e_coco-panoptic.py',
    '../_base_/backbones/swin-l-p4-w7-22k.py',
]

model = dict(backbone={{_base_.swin_l_backbone}},
             neck=dict(in_channels={{_base_.swin_l_channels}}))
