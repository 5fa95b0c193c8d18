# The bundled synthetic panoptic dataset (tools/dataset_converters/make_synthetic_panoptic.py).
# COCO-panoptic format, read by mmdet's CocoPanopticDataset unchanged. The data root can be
# moved with the environment variable MMMAPS_SYNTHETIC_ROOT (must end with '/').
dataset_type = 'CocoPanopticDataset'
data_root = '{{$MMMAPS_SYNTHETIC_ROOT:data/synthetic/}}'
backend_args = None
image_size = (128, 128)

# Must match mmmaps/datasets/synthetic_panoptic.py (a test checks it).
metainfo = dict(
    classes=('person', 'car', 'boat', 'ball', 'buoy', 'dog', 'seal', 'sky', 'water', 'sand',
             'grass', 'road', 'wall'),
    thing_classes=('person', 'car', 'boat', 'ball', 'buoy', 'dog', 'seal'),
    stuff_classes=('sky', 'water', 'sand', 'grass', 'road', 'wall'),
    palette=[(220, 20, 60), (0, 0, 142), (0, 80, 100), (255, 160, 0), (250, 0, 30),
             (165, 42, 42), (100, 170, 30), (70, 130, 180), (0, 60, 200), (220, 190, 120),
             (60, 160, 60), (128, 64, 128), (150, 150, 150)])

train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True, backend_args=backend_args),
    dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True,
         backend_args=backend_args),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=image_size, crop_type='absolute', recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadPanopticAnnotations', backend_args=backend_args),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]

train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/panoptic_train.json',
        data_prefix=dict(img='train/', seg='annotations/panoptic_train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=4,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/panoptic_val.json',
        data_prefix=dict(img='val/', seg='annotations/panoptic_val/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader

# PQ (panopticapi definition), instance AP on the thing predictions, and mIoU of the
# semantic map derived from the panoptic prediction.
val_evaluator = [
    dict(type='FastCocoPanopticMetric',
         ann_file=data_root + 'annotations/panoptic_val.json',
         seg_prefix=data_root + 'annotations/panoptic_val/',
         backend_args=backend_args),
    dict(type='CocoMetric',
         ann_file=data_root + 'annotations/instances_val.json',
         metric=['segm'],
         backend_args=backend_args),
    dict(type='PanopticSemSegMetric'),
]
test_evaluator = val_evaluator
