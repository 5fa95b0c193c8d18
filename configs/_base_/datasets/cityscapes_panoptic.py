# Cityscapes panoptic (19 classes: 8 things, 11 stuff) in COCO-panoptic format, as written by
# tools/dataset_converters/cityscapes2coco_panoptic.py from gtFine + leftImg8bit
# (data/README.md). Read by mmdet's CocoPanopticDataset with the metainfo below; PQ, mask AP
# and mIoU as for COCO. Pipelines: Mask2Former's Cityscapes recipe (512x1024 crops).
dataset_type = 'CocoPanopticDataset'
data_root = 'data/cityscapes/'
backend_args = None
crop_size = (512, 1024)

# Things first (the label order of mmdet's panoptic heads); the JSON lists its categories in
# this order (a test checks it). Colours: cityscapesscripts' label colours.
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

train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True, backend_args=backend_args),
    dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True,
         backend_args=backend_args),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomResize', scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, crop_type='absolute', recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
    dict(type='LoadPanopticAnnotations', backend_args=backend_args),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]

# Image file names are '<city>/<name>_leftImg8bit.png', relative to leftImg8bit/{split}/.
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/cityscapes_panoptic_train.json',
        data_prefix=dict(img='leftImg8bit/train/', seg='annotations/cityscapes_panoptic_train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/cityscapes_panoptic_val.json',
        data_prefix=dict(img='leftImg8bit/val/', seg='annotations/cityscapes_panoptic_val/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader

# PQ (panopticapi definition), instance AP on the thing predictions, and mIoU of the
# semantic map derived from the panoptic prediction.
val_evaluator = [
    dict(type='FastCocoPanopticMetric',
         ann_file=data_root + 'annotations/cityscapes_panoptic_val.json',
         seg_prefix=data_root + 'annotations/cityscapes_panoptic_val/',
         backend_args=backend_args),
    dict(type='CocoMetric',
         ann_file=data_root + 'annotations/instancesonly_filtered_gtFine_val.json',
         metric=['segm'],
         backend_args=backend_args),
    dict(type='PanopticSemSegMetric'),
]
test_evaluator = val_evaluator
