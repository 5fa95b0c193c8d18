# Panoptic SegFormer R101 on COCO panoptic, 24 epochs (Table 1): PQ 50.6, PQ_th 55.5,
# PQ_st 43.2, 69.9M params, 286G FLOPs; test-dev (Table 2): PQ 50.9.
_base_ = './panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

model = dict(
    backbone=dict(
        depth=101,
        # ImageNet weights: point to a local file (nothing is downloaded), e.g.
        #   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/resnet101-63fe2227.pth
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')))
