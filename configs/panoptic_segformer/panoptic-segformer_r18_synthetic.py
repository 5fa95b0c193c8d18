# Tiny CPU-sized Panoptic SegFormer on the bundled synthetic panoptic dataset: ResNet-18
# (random init: no weights are downloaded) mapped to 64-d, 2 deformable encoder layers,
# 3 location-decoder layers on 20 thing queries, 3 mask-decoder layers (4 heads), one stuff
# query per stuff class (6), mask-wise merging. 128x128 images; trains in minutes on 2 CPU
# cores. The structure is the paper's; two deliberate scale changes:
# - levels C2-C4 (strides 4, 8, 16) instead of C3-C5: masks come from the first level, and
#   at 128 px the paper's 1/8 gives 16x16 masks for objects of 10-40 px (measured, 1200
#   iterations: C3-C5 PQ 53.2 / PQ_th 20.2, C2-C4 PQ 63.1 / PQ_th 36.4);
# - no 0.1 lr multiplier on the backbone (it is for ImageNet-pretrained backbones; this one
#   starts from random weights): PQ 68.3 / PQ_th 45.1 with C2-C4.
_base_ = [
    '../_base_/datasets/synthetic_panoptic.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmmaps'], allow_failed_imports=False)

num_things_classes = 7
num_stuff_classes = 6
embed_dims = 64
num_levels = 3
num_heads = 4

data_preprocessor = dict(
    type='DetDataPreprocessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_size_divisor=32,
    pad_mask=True,
    mask_pad_value=0,
    pad_seg=True,
    seg_pad_value=255,
    batch_augments=[
        dict(type='BatchFixedSizePad', size={{_base_.image_size}}, img_pad_value=0,
             pad_mask=True, mask_pad_value=0, pad_seg=True, seg_pad_value=255)
    ])

model = dict(
    type='PanopticSegFormer',
    num_queries=20,  # N_th thing queries
    num_feature_levels=num_levels,
    with_box_refine=True,
    as_two_stage=False,
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='ResNet',
        depth=18,
        num_stages=4,
        out_indices=(0, 1, 2),  # C2, C3, C4 (see the top of the file)
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        # Random init. For ImageNet weights point to a local file:
        # init_cfg=dict(type='Pretrained', checkpoint='/path/to/resnet18-f37072fd.pth')
        init_cfg=None),
    neck=dict(
        type='ChannelMapper',
        in_channels=[64, 128, 256],
        kernel_size=1,
        out_channels=embed_dims,
        act_cfg=None,
        norm_cfg=dict(type='GN', num_groups=16),
        num_outs=num_levels),
    encoder=dict(
        num_layers=2,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims, num_heads=num_heads,
                               num_levels=num_levels, num_points=4, batch_first=True),
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=256, ffn_drop=0.0))),
    decoder=dict(  # the location decoder
        num_layers=3,
        return_intermediate=True,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims, num_heads=num_heads, dropout=0.0,
                               batch_first=True),
            cross_attn_cfg=dict(embed_dims=embed_dims, num_heads=num_heads,
                                num_levels=num_levels, num_points=4, batch_first=True),
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=256, ffn_drop=0.0)),
        post_norm_cfg=None),
    positional_encoding=dict(num_feats=embed_dims // 2, normalize=True, offset=-0.5),
    bbox_head=dict(
        type='PanopticSegFormerHead',
        num_things_classes=num_things_classes,
        num_stuff_classes=num_stuff_classes,
        embed_dims=embed_dims,
        query_decoupling=True,
        location_target='box',
        mask_decoder=dict(
            num_layers=3,
            num_levels=num_levels,
            mask_head=dict(type='AttentionMapToMask', hidden_channels=8),
            layer_cfg=dict(embed_dims=embed_dims, num_heads=num_heads,
                           feedforward_channels=256, dropout=0.0, self_attn=False)),
        thing_stuff_weighting='count',
        sync_cls_avg_factor=True,
        # location-decoder detection loss (lambda_det = 1): focal + L1 + GIoU
        loss_cls=dict(type='Float32FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                      loss_weight=2.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0),
        # mask decoder: focal (lambda_cls = 2) + Dice (lambda_seg = 1) on every layer
        loss_mask_cls=dict(type='Float32FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                           loss_weight=2.0),
        loss_mask=dict(type='DiceLoss', use_sigmoid=True, activate=True, naive_dice=True,
                       eps=1.0, loss_weight=1.0)),
    panoptic_fusion_head=dict(
        type='MaskWiseMergingFusionHead',
        num_things_classes=num_things_classes,
        num_stuff_classes=num_stuff_classes,
        loss_panoptic=None,
        init_cfg=None),
    train_cfg=dict(
        # location decoder (Deformable DETR matching)
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0)
            ]),
        # thing queries of the mask decoder: class + detection + segmentation cost
        mask_assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0),
                dict(type='DiceCost', weight=1.0, pred_act=True, eps=1.0)
            ])),
    test_cfg=dict(
        panoptic_on=True,
        semantic_on=False,
        instance_on=True,
        merge='mask_wise',
        cls_activation='sigmoid',
        alpha=1.0,
        beta=2.0,
        t_cnf=0.25,
        t_keep=0.6,
        mask_thr=0.5,
        max_per_image=20,
        # instance results from thing classes only (stuff queries cannot take the slots)
        instance_classes='things'),
    init_cfg=None)

# stuff-only images are kept, as in the R50 config
train_dataloader = dict(dataset=dict(filter_cfg=dict(filter_empty_gt=False, min_size=8)))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-4, weight_decay=1e-4),
    paramwise_cfg=dict(
        custom_keys={
            'sampling_offsets': dict(lr_mult=0.1),
            'reference_points': dict(lr_mult=0.1),
        }),
    clip_grad=dict(max_norm=0.1, norm_type=2))

max_iters = 400
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False,
         milestones=[int(max_iters * 0.85)], gamma=0.1),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, save_last=True,
                    max_keep_ckpts=1))
log_processor = dict(type='LogProcessor', window_size=20, by_epoch=False)
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False, base_batch_size=4)
