# Table 6, "6* (box-free)" (PQ 49.2, PQ_th 53.5, PQ_st 42.6): the 6-layer location decoder
# predicts mask mass centres instead of boxes, supervised (and matched) by L1 only
# (appendix A.1); loss_iou is unused. The default (6 layers, boxes) is PQ 49.6.
_base_ = '../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

model = dict(
    bbox_head=dict(location_target='mass_center'),
    train_cfg=dict(
        assigner=dict(match_costs=[
            dict(type='FocalLossCost', weight=2.0),
            dict(type='MassCenterL1Cost', weight=5.0)
        ]),
        mask_assigner=dict(match_costs=[
            dict(type='FocalLossCost', weight=2.0),
            dict(type='MassCenterL1Cost', weight=5.0),
            dict(type='DiceCost', weight=1.0, pred_act=True, eps=1.0)
        ])))
