# Mask2Former R50 on ADE20K panoptic (150 classes: 100 things, 50 stuff), Mask2Former's
# ADE20K recipe: 640 crops, batch 16, 160k iterations, poly LR ("50e" kept from mmdet's name).
# MAPS paper Tables 2 and 4, Mask2Former† row: PQ 39.1, AP 26.2, mIoU 45.3.
# Data: tools/dataset_converters (see data/README.md) -> data/ADEChallengeData2016/.
_base_ = './mask2former_r50_8xb2-lsj-50e_coco-panoptic.py'

num_things_classes = 100
num_stuff_classes = 50
num_classes = num_things_classes + num_stuff_classes
image_size = (640, 640)
data_root = 'data/ADEChallengeData2016/'
dataset_type = 'ADE20KPanopticDataset'

model = dict(
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchFixedSizePad', size=image_size, img_pad_value=0, pad_mask=True,
             mask_pad_value=0, pad_seg=True, seg_pad_value=255)
    ]),
    panoptic_head=dict(
        num_things_classes=num_things_classes,
        num_stuff_classes=num_stuff_classes,
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    panoptic_fusion_head=dict(
        num_things_classes=num_things_classes, num_stuff_classes=num_stuff_classes))

train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomResize', scale=(2560, 640), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=image_size, crop_type='absolute', recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    dict(type='LoadPanopticAnnotations'),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=2,
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

max_iters = 160000
param_scheduler = dict(
    _delete_=True, type='PolyLR', eta_min=0, power=0.9, begin=0, end=max_iters,
    by_epoch=False)
interval = 5000
train_cfg = dict(max_iters=max_iters, val_interval=interval,
                 dynamic_intervals=[(max_iters // interval * interval + 1, max_iters)])
