# Panoptic SegFormer R50 on COCO panoptic (133 classes: 80 things, 53 stuff), the paper's
# default setup (appendix A.1): ResNet-50 C3-C5 -> ChannelMapper (256-d, 3 levels) -> 6
# deformable encoder layers -> location decoder (6 deformable layers, iterative box
# refinement, N_th = 300 thing queries) -> mask decoder (6 cross-attention layers, 8 heads)
# on the thing queries + 53 class-fixed stuff queries -> mask-wise merging.
# Batch 8 x 1, AdamW 1.4e-4, 24 epochs, LR x0.1 at epoch 18.
# Paper, COCO val (Table 1): PQ 49.6, PQ_th 54.4, PQ_st 42.4, 51.0M params, 214G FLOPs.
# This file holds the whole recipe; the other Panoptic SegFormer configs inherit it.
_base_ = [
    'mmdet::_base_/datasets/coco_panoptic.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmmaps'], allow_failed_imports=False)

data_root = 'data/coco/'
num_things_classes = 80
num_stuff_classes = 53
embed_dims = 256
num_levels = 3  # C3, C4, C5 (Eq. 1); no extra level
num_heads = 8

data_preprocessor = dict(
    type='DetDataPreprocessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_size_divisor=32,  # C5 (1/32) tiles the input exactly; the masks live at 1/8
    pad_mask=True,
    mask_pad_value=0,
    pad_seg=True,
    seg_pad_value=255)

model = dict(
    type='PanopticSegFormer',
    num_queries=300,  # N_th thing queries
    num_feature_levels=num_levels,
    with_box_refine=True,
    as_two_stage=False,
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(1, 2, 3),  # C3, C4, C5
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        style='pytorch',
        # ImageNet weights. Nothing can be downloaded here: put the torchvision file next
        # to the data and point to it, e.g.
        #   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/resnet50-0676ba61.pth
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(
        type='ChannelMapper',
        in_channels=[512, 1024, 2048],
        kernel_size=1,
        out_channels=embed_dims,
        act_cfg=None,
        norm_cfg=dict(type='GN', num_groups=32),
        num_outs=num_levels),
    encoder=dict(  # DeformableDetrTransformerEncoder, as mmdet's Deformable DETR
        num_layers=6,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims, num_heads=num_heads,
                               num_levels=num_levels, num_points=4, batch_first=True),
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=1024, ffn_drop=0.1))),
    decoder=dict(  # the location decoder (DeformableDetrTransformerDecoder)
        num_layers=6,
        return_intermediate=True,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims, num_heads=num_heads, dropout=0.1,
                               batch_first=True),
            cross_attn_cfg=dict(embed_dims=embed_dims, num_heads=num_heads,
                                num_levels=num_levels, num_points=4, batch_first=True),
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=1024, ffn_drop=0.1)),
        post_norm_cfg=None),
    positional_encoding=dict(num_feats=embed_dims // 2, normalize=True, offset=-0.5),
    bbox_head=dict(
        type='PanopticSegFormerHead',
        num_things_classes=num_things_classes,
        num_stuff_classes=num_stuff_classes,  # = number of stuff queries
        embed_dims=embed_dims,
        query_decoupling=True,
        location_target='box',
        mask_decoder=dict(
            num_layers=6,  # D_m
            num_levels=num_levels,
            # the ~200-parameter FC head of Fig. B.5
            mask_head=dict(type='AttentionMapToMask', hidden_channels=8),
            # FFN 1024 = 4 x 256 (as the deformable layers; the paper gives no width),
            # no dropout, no self-attention (appendix B.3)
            layer_cfg=dict(embed_dims=embed_dims, num_heads=num_heads,
                           feedforward_channels=1024, dropout=0.0, self_attn=False)),
        thing_stuff_weighting='count',  # lambda_things + lambda_stuff = 1 over the batch
        sync_cls_avg_factor=True,
        # location-decoder detection loss (lambda_det = 1): focal + L1 + GIoU
        loss_cls=dict(type='Float32FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                      loss_weight=2.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0),
        # mask decoder, every layer: focal (lambda_cls = 2) + Dice (lambda_seg = 1)
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
        merge='mask_wise',  # Algorithm 1
        cls_activation='sigmoid',
        alpha=1.0,  # Eq. 6: s_i = p_i^alpha * mean(m_i[m_i > 0.5])^beta
        beta=2.0,
        t_cnf=0.25,
        t_keep=0.6,
        mask_thr=0.5,
        max_per_image=100,
        # instance results from thing classes only (stuff queries cannot take the slots)
        instance_classes='things'),
    init_cfg=None)

# DETR / Deformable DETR multi-scale training with random crops (appendix A.1): short side
# 480..800 (step 32), long side <= 1333; or resize (400|500|600) -> random crop 384..600
# -> the same multi-scale resize.
multi_scales = [(s, 1333) for s in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True,
         backend_args={{_base_.backend_args}}),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize',
                     scales=[(400, 4200), (500, 4200), (600, 4200)],
                     keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                     recompute_bbox=True, allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True)
            ]
        ]),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadPanopticAnnotations', backend_args={{_base_.backend_args}}),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=1,
    num_workers=2,
    dataset=dict(
        data_root=data_root,
        pipeline=train_pipeline,
        # images (and crops) with stuff only still train the stuff queries and teach the
        # thing queries "no object", as in the authors' release (mmdet drops them)
        filter_cfg=dict(filter_empty_gt=False, min_size=32)))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

# PQ (PQ_th, PQ_st), AP of the things and mIoU of the panoptic output in one test run
val_evaluator = [
    dict(type='FastCocoPanopticMetric',
         ann_file=data_root + 'annotations/panoptic_val2017.json',
         seg_prefix=data_root + 'annotations/panoptic_val2017/',
         backend_args=None),
    dict(type='CocoMetric',
         ann_file=data_root + 'annotations/instances_val2017.json',
         metric=['segm'],
         backend_args=None),
    dict(type='PanopticSemSegMetric'),
]
test_evaluator = val_evaluator

# AdamW 1.4e-4 for batch 8 (8 GPUs x 1 image); backbone (and, as in mmdet's Deformable
# DETR, the deformable sampling offsets / reference points) at 0.1x
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1.4e-4, weight_decay=1e-4),
    paramwise_cfg=dict(
        custom_keys={
            'backbone': dict(lr_mult=0.1),
            'sampling_offsets': dict(lr_mult=0.1),
            'reference_points': dict(lr_mult=0.1),
        }),
    clip_grad=dict(max_norm=0.1, norm_type=2))

max_epochs = 24
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[18],
         gamma=0.1)
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3))

# NOTE: `auto_scale_lr` is for automatically scaling LR (--auto-scale-lr),
# base_batch_size = (8 GPUs) x (1 image per GPU)
auto_scale_lr = dict(enable=False, base_batch_size=8)
