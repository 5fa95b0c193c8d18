# Table 4 "Ours (w/o crop)": instance segmentation AP^seg 40.4 on COCO test-dev (AP_S 21.1,
# AP_M 43.8, AP_L 54.7) vs 41.7 with random crops (the default config). Trained with the
# multi-scale resize only (no crop branch); the AP comes from the config's CocoMetric.
_base_ = '../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True,
         backend_args={{_base_.backend_args}}),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoiceResize', scales={{_base_.multi_scales}}, keep_ratio=True),
    dict(type='PackDetInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
