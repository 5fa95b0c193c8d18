# pvtv2_b5 backbone of the Panoptic SegFormer configs (paper-text and release variants).

# PVTv2-B5 weights. The paper's are ImageNet-22K pretrained; mmdet's PVTv2 configs use the
# ImageNet-1K file https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b5.pth.
# Nothing is downloaded here: put the file at this path, or pass
# --cfg-options model.backbone.init_cfg.checkpoint=/path/to/it.
pretrained = 'checkpoints/pvt_v2_b5_22k.pth'

pvtv2_b5_backbone = dict(
    _delete_=True,
    type='PyramidVisionTransformerV2',
    embed_dims=64,
    num_layers=[3, 6, 40, 3],
    num_heads=[1, 2, 5, 8],
    mlp_ratios=(4, 4, 4, 4),
    out_indices=(1, 2, 3),  # stages 2-4: 128, 320, 512 channels at 1/8, 1/16, 1/32
    init_cfg=dict(type='Pretrained', checkpoint=pretrained))
pvtv2_b5_channels = [128, 320, 512]
