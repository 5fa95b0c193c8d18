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
        filter_rounds=3,
        filter_max_queries=20,  # the number of thing queries
        mask_loss_upsample=2,
        thing_aux_branches=True,
        thing_aux_loss_weight=0.0,
        loss_stuff_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                            loss_weight=4.0),
        loss_mask=dict(type='DiceLoss', use_sigmoid=False, activate=False, naive_dice=False,
                       eps=1e-6, loss_weight=2.0)),
    train_cfg=dict(
        mask_assigner=dict(
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0),
                dict(type='DiceCost', weight=2.0, pred_act=False, naive_dice=False, eps=1e-3)
            ])),
    test_cfg=dict(
        mask_activation='identity',
        t_keep=dict(_delete_=True, thing=0.6, stuff=0.8)))
