# Panoptic SegFormer PVTv2-B5 (ImageNet-22K) on COCO panoptic, 24 epochs (Table 1):
# PQ 55.4, PQ_th 61.2, PQ_st 46.6, 104.9M params, 349G FLOPs; test-dev (Table 2): PQ 55.8.
# Optimizer and schedule as the R50 config (backbone LR x0.1).
_base_ = './panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

# PVTv2-B5 weights. The paper's are ImageNet-22K pretrained; mmdet's PVTv2 configs use the
# ImageNet-1K file https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b5.pth.
# Nothing is downloaded here: put the file at this path, or pass
# --cfg-options model.backbone.init_cfg.checkpoint=/path/to/it.
pretrained = 'checkpoints/pvt_v2_b5_22k.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='PyramidVisionTransformerV2',
        embed_dims=64,
        num_layers=[3, 6, 40, 3],
        num_heads=[1, 2, 5, 8],
        mlp_ratios=(4, 4, 4, 4),
        out_indices=(1, 2, 3),  # stages 2-4: 128, 320, 512 channels at 1/8, 1/16, 1/32
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 320, 512]))
