# The tiny synthetic Panoptic SegFormer (ResNet-18, 64-d, 128 px) with the structure and
# losses of the authors' release (see panoptic-segformer-release_r50_8xb1-24e_coco-panoptic.py
# and the README table): 4 encoder levels (C2-C4 + a stride-2 convolution on C4), separate
# thing (2 layers) and stuff (3 layers, self-attention) mask decoders on the first 3 levels,
# query filtering, Dice x2 on upsampled masks, location-decoder thing classes.
_base_ = './panoptic-segformer_r18_synthetic.py'

embed_dims = 64
num_heads = 4
encoder_levels = 4
mask_levels = 3
release_mask_layer = dict(embed_dims=embed_dims, num_heads=num_heads,
                          feedforward_channels=4 * embed_dims, dropout=0.0,
                          ffn_act_cfg=dict(type='GELU'), norm_cfg=dict(type='LN', eps=1e-6))

model = dict(
    # no padding (the release pads to a multiple of 1 and trains one image per GPU: its
    # weights never saw padded borders, and its masks are resized from the 1/8 grid)
    data_preprocessor=dict(pad_size_divisor=1),
    num_feature_levels=encoder_levels,
    neck=dict(num_outs=encoder_levels),
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_levels=encoder_levels))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(num_levels=encoder_levels))),
    bbox_head=dict(
        type='PanopticSegFormerReleaseHead',
        mask_decoder=None,  # replaced by the two decoders below
        # the location decoder's and the aux thing branches' losses are the base config's
        thing_mask_decoder=dict(
            num_layers=2, num_levels=mask_levels,
            mask_head=dict(type='LevelwiseAttentionMapToMask'), tail=True,
            query_pos=None, memory_pos=False, layer_cfg=release_mask_layer),
        stuff_mask_decoder=dict(
            num_layers=3, num_levels=mask_levels,
            mask_head=dict(type='LevelwiseAttentionMapToMask'), tail=True,
            query_pos='input', memory_pos=False,
            layer_cfg=dict(release_mask_layer, self_attn=True, self_attn_heads=num_heads)),
        # one Hungarian round: the release's HungarianAssigner_filter asks for min(3, 300 // N)
        # but its loop always stops after the first (it tests the just-matched pairs' cost
        # after setting their rows to INF); filter_rounds=3 is what its code intended
        filter_rounds=1,
        mask_loss_upsample=2,
        thing_aux_branches=True,
        thing_aux_loss_weight=0.0,
        loss_stuff_cls=dict(type='Float32FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                            loss_weight=4.0),
        loss_mask=dict(type='DiceLoss', use_sigmoid=False, activate=False, naive_dice=False,
                       eps=1e-6, loss_weight=2.0)),
    train_cfg=dict(
        mask_assigner=dict(
            match_costs=[
                # the release's HungarianAssigner_multi_info doubles cls_cost's weight 2
                dict(type='FocalLossCost', weight=4.0),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0),
                dict(type='SquaredDiceCost', weight=2.0, eps=1e-3)
            ])),
    test_cfg=dict(
        mask_resize='one_step',  # the 1/8 masks straight to the original image size
        mask_area_offset=1,  # mask score sum(m[m > .5]) / (|m > .5| + 1)
        instance_score='merging',  # AP of the things ranked by the merging score
        mask_activation='identity',
        t_keep=dict(_delete_=True, thing=0.6, stuff=0.8)))
