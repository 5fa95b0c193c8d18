# Panoptic SegFormer R101 as the authors' release builds it (see the release R50 config).
_base_ = './panoptic-segformer-release_r50_8xb1-24e_coco-panoptic.py'

model = dict(
    backbone=dict(
        depth=101,
        # ImageNet weights: point to a local file (nothing is downloaded), e.g.
        #   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/resnet101-63fe2227.pth
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')))
