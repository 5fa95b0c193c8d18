# swin_l backbone of the Panoptic SegFormer configs (paper-text and release variants).

# Swin-L 22K weights (swin_large_patch4_window7_224_22k.pth of the Swin Transformer
# release, https://github.com/SwinTransformer/storage/releases/download/v1.0.0/
# swin_large_patch4_window7_224_22k.pth). Nothing is downloaded here: put the file at
# this path, or pass --cfg-options model.backbone.init_cfg.checkpoint=/path/to/it.
pretrained = 'checkpoints/swin_large_patch4_window7_224_22k.pth'

swin_l_backbone = dict(
    _delete_=True,
    type='SwinTransformer',
    pretrain_img_size=224,
    embed_dims=192,
    depths=[2, 2, 18, 2],
    num_heads=[6, 12, 24, 48],
    window_size=7,
    mlp_ratio=4,
    qkv_bias=True,
    qk_scale=None,
    drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=0.3,
    patch_norm=True,
    out_indices=(1, 2, 3),  # stages 2-4: 384, 768, 1536 channels at 1/8, 1/16, 1/32
    with_cp=False,
    convert_weights=True,  # the original Swin checkpoint layout
    init_cfg=dict(type='Pretrained', checkpoint=pretrained))
swin_l_channels = [384, 768, 1536]
