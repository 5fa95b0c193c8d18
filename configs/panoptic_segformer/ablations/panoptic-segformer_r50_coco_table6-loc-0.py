# Table 6, 0 location-decoder layers (PQ 47.0, PQ_th 50.0, PQ_st 42.5): the thing queries
# enter the mask decoder directly; no detection loss, so the thing matching uses only the
# class and mask costs.
_base_ = '../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

model = dict(
    decoder=dict(num_layers=0),
    train_cfg=dict(
        mask_assigner=dict(match_costs=[
            dict(type='FocalLossCost', weight=2.0),
            dict(type='DiceCost', weight=1.0, pred_act=True, eps=1.0)
        ])))
