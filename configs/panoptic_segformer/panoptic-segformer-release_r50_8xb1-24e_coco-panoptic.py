# Panoptic SegFormer R50 on COCO panoptic as the authors' release builds it (the code behind
# Table 1's PQ 49.6), not as the paper's text describes it. Every difference to the
# paper-text config it inherits is a row of the table in README.md ("Paper text vs release").
# The authors' released checkpoints load into it after
# tools/model_converters/panoptic_segformer_official.py, and its outputs and losses equal
# the authors' code (tests/test_models/test_psf_official_golden.py):
# - 4 encoder levels: C3-C5 + a 3x3 stride-2 convolution on C5 (ChannelMapper's extra
#   level); both mask decoders attend to the first 3; no padding (pad_size_divisor=1);
# - separate mask decoders: things (4 layers) and stuff (6 layers, self-attention), each
#   with the release's mask head (per-level FC + ReLU) and a mask-only tail layer; GELU
#   FFN (4x), LayerNorm eps 1e-6; no positional embedding on the memory or the thing
#   queries, the stuff queries' embedding added to every layer's input;
# - training: only the thing queries that one round of Hungarian matching on the location
#   decoder picks enter the thing decoder; thing classes come from the location decoder
#   (the thing decoder's class/box branches exist but their losses are x0); thing matching
#   focal 4 + L1 5 + GIoU 2 + squared Dice 2 against bilinearly resized targets;
# - losses: Dice (squared-denominator, on the raw mask scores) x2 at 1/4 on every layer
#   and tail, against bilinearly resized targets; stuff focal x2 x2; lambda_things /
#   lambda_stuff over the global batch, counts clamped at 1;
# - inference: the 100 best (query, class) pairs of the location decoder; the 1/8 masks
#   resized to the original image in one step and thresholded at 0.5 as they are (no
#   sigmoid); mask score sum / (area + 1); t_keep 0.6 for things and 0.8 for stuff; the
#   instance results ranked by the merging score.
_base_ = './panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

embed_dims = 256
num_heads = 8
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
        # one Hungarian round: the release's HungarianAssigner_filter asks for min(3, 300 // N)
        # but its loop always stops after the first (it tests the just-matched pairs' cost
        # after setting their rows to INF); filter_rounds=3 is what its code intended
        filter_rounds=1,
        mask_loss_upsample=2,  # Dice at 1/4
        thing_aux_branches=True,
        thing_aux_loss_weight=0.0,
        # the release's focal loss (weight 2) doubled for stuff
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
        mask_activation='identity',  # the mask scores are thresholded at 0.5 as they are
        t_keep=dict(_delete_=True, thing=0.6, stuff=0.8)))
