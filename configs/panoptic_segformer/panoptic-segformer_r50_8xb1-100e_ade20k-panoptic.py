# Panoptic SegFormer R50 on ADE20K panoptic (150 classes: 100 things, 50 stuff; 50 stuff
# queries), appendix A.1: 100 epochs, LR x0.1 after epoch 80, image size 512..2048,
# otherwise the COCO recipe (batch 8 x 1, AdamW 1.4e-4, 300 thing queries, random crops).
# Paper, ADE20K val (Table 3): PQ 36.4, PQ_th 35.3, PQ_st 38.6, SQ 78.0, RQ 44.9.
# "Image size varying from 512 to 2048" is read as the short side: one of 512, 640, ...,
# 2048 (step 128) per image, long side <= 4096 (binds only for panoramas wider than 2:1);
# the crop branch is COCO's with the same final scales. The paper gives no test scale:
# short side 512 (ADE20K's native size), long side <= 2048. See README.md.
# Data: tools/dataset_converters (see data/README.md) -> data/ADEChallengeData2016/.
_base_ = './panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

num_things_classes = 100
num_stuff_classes = 50
data_root = 'data/ADEChallengeData2016/'
dataset_type = 'ADE20KPanopticDataset'

model = dict(
    bbox_head=dict(num_things_classes=num_things_classes,
                   num_stuff_classes=num_stuff_classes),
    panoptic_fusion_head=dict(num_things_classes=num_things_classes,
                              num_stuff_classes=num_stuff_classes))

multi_scales = [(s, 4096) for s in range(512, 2049, 128)]
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
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadPanopticAnnotations', backend_args={{_base_.backend_args}}),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='ade20k_panoptic_train.json',
        data_prefix=dict(img='images/training/', seg='ade20k_panoptic_train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='ade20k_panoptic_val.json',
        data_prefix=dict(img='images/validation/', seg='ade20k_panoptic_val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='FastCocoPanopticMetric',
         ann_file=data_root + 'ade20k_panoptic_val.json',
         seg_prefix=data_root + 'ade20k_panoptic_val/'),
    dict(type='CocoMetric', ann_file=data_root + 'ade20k_instance_val.json', metric=['segm']),
    dict(type='PanopticSemSegMetric'),
]
test_evaluator = val_evaluator

max_epochs = 100
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[80],
         gamma=0.1)
]
train_cfg = dict(max_epochs=max_epochs, val_interval=10)
