# Panoptic SegFormer R50 on COCO panoptic as the authors' release builds it (the code behind
# Table 1's PQ 49.6), not as the paper's text describes it. Every difference to the
# paper-text config it inherits is a row of the table in README.md ("Paper text vs release"):
# - 4 encoder levels: C3-C5 + a 3x3 stride-2 convolution on C5 (ChannelMapper's extra
#   level); both mask decoders attend to the first 3;
# - separate mask decoders: things (4 layers) and stuff (6 layers, self-attention), each
#   with the release's mask head (per-level FC + ReLU) and a mask-only tail layer; GELU
#   FFN (4x), LayerNorm eps 1e-6; no positional embedding on the memory or the thing
#   queries, the stuff queries' embedding added to every layer's input;
# - training: only the thing queries picked by up to 3 rounds of Hungarian matching on
#   the location decoder enter the thing decoder; thing classes come from the location
#   decoder (the thing decoder's class/box branches exist but their losses are x0);
# - losses: Dice (squared-denominator, on the raw mask scores) x2 at 1/4 on every layer
#   and tail; stuff focal x2 x2; lambda_things / lambda_stuff over the global batch;
# - inference: the 100 best (query, class) pairs of the location decoder; masks thresholded
#   at 0.5 as they are (no sigmoid); t_keep 0.6 for things and 0.8 for stuff.
_base_ = './panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

embed_dims = 256
num_heads = 8
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
            num_layers=4,
            num_levels=mask_levels,
            mask_head=dict(type='LevelwiseAttentionMapToMask'),
            tail=True,
            query_pos=None,
            memory_pos=False,
            layer_cfg=release_mask_layer),
        stuff_mask_decoder=dict(
            num_layers=6,
            num_levels=mask_levels,
            mask_head=dict(type='LevelwiseAttentionMapToMask'),
            tail=True,
            query_pos='input',
            memory_pos=False,
            layer_cfg=dict(release_mask_layer, self_attn=True, self_attn_heads=num_heads)),
        filter_rounds=3,
        filter_max_queries=100,
        mask_loss_upsample=2,  # Dice at 1/4
        thing_aux_branches=True,
        thing_aux_loss_weight=0.0,
        # the release's focal loss (weight 2) doubled for stuff
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
        mask_activation='identity',  # the mask scores are thresholded at 0.5 as they are
        t_keep=dict(_delete_=True, thing=0.6, stuff=0.8)))
