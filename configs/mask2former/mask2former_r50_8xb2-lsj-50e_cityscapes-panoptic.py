# Mask2Former R50 on Cityscapes panoptic (19 classes: 8 things, 11 stuff), Mask2Former's
# Cityscapes recipe: 512x1024 crops, batch 16, 90k iterations, poly LR. MAPS paper Table 3
# (Mask2Former row: PQ 62.1, AP 37.3, mIoU 77.5). Data in COCO-panoptic format under
# data/cityscapes/ (see data/README.md); the categories must be listed things first.
_base_ = './mask2former_r50_8xb2-lsj-50e_coco-panoptic.py'

num_things_classes = 8
num_stuff_classes = 11
num_classes = num_things_classes + num_stuff_classes
crop_size = (512, 1024)
data_root = 'data/cityscapes/'
metainfo = dict(
    classes=('person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle',
             'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
             'traffic sign', 'vegetation', 'terrain', 'sky'),
    thing_classes=('person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle',
                   'bicycle'),
    stuff_classes=('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
                   'traffic sign', 'vegetation', 'terrain', 'sky'),
    palette=[(220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
             (0, 80, 100), (0, 0, 230), (119, 11, 32), (128, 64, 128), (244, 35, 232),
             (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153), (250, 170, 30),
             (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180)])

model = dict(
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchFixedSizePad', size=crop_size, img_pad_value=0, pad_mask=True,
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
    dict(type='RandomResize', scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, crop_type='absolute', recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
    dict(type='LoadPanopticAnnotations'),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=2,
    dataset=dict(
        type='CocoPanopticDataset',
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/cityscapes_panoptic_train.json',
        data_prefix=dict(img='leftImg8bit/train/', seg='annotations/cityscapes_panoptic_train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        type='CocoPanopticDataset',
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/cityscapes_panoptic_val.json',
        data_prefix=dict(img='leftImg8bit/val/', seg='annotations/cityscapes_panoptic_val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='FastCocoPanopticMetric',
         ann_file=data_root + 'annotations/cityscapes_panoptic_val.json',
         seg_prefix=data_root + 'annotations/cityscapes_panoptic_val/'),
    dict(type='CocoMetric', ann_file=data_root + 'annotations/instancesonly_filtered_gtFine_val.json',
         metric=['segm']),
    dict(type='PanopticSemSegMetric'),
]
test_evaluator = val_evaluator

max_iters = 90000
param_scheduler = dict(
    _delete_=True, type='PolyLR', eta_min=0, power=0.9, begin=0, end=max_iters,
    by_epoch=False)
interval = 5000
train_cfg = dict(max_iters=max_iters, val_interval=interval,
                 dynamic_intervals=[(max_iters // interval * interval + 1, max_iters)])
