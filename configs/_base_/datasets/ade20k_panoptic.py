# ADE20K panoptic (150 classes: 100 things, 50 stuff) in COCO-panoptic format, as written by
# tools/dataset_converters/ade20k2coco_panoptic.py from ADEChallengeData2016 + the instance
# annotations (data/README.md). Read by mmdet's CocoPanopticDataset with the metainfo below;
# PQ, mask AP and mIoU as for COCO. Pipelines: Mask2Former's ADE20K recipe (640 crops).
dataset_type = 'CocoPanopticDataset'
data_root = 'data/ADEChallengeData2016/'
backend_args = None
image_size = (640, 640)

# Things first (the label order of mmdet's panoptic heads). Names and order are those of mmdet's
# ADE20KPanopticDataset; the JSON lists its categories in this order (a test checks both).
# Colours: ADE20K's palette (mmseg), each class keeping its own colour.
thing_classes = (
    'bed', 'window', 'cabinet', 'person', 'door', 'table', 'curtain', 'chair', 'car',
    'painting, picture', 'sofa', 'shelf', 'mirror', 'armchair', 'seat', 'fence', 'desk',
    'wardrobe, closet, press', 'lamp', 'tub', 'rail', 'cushion', 'box', 'column, pillar',
    'signboard, sign', 'chest of drawers, chest, bureau, dresser', 'counter', 'sink', 'fireplace',
    'refrigerator, icebox', 'stairs', 'case, display case, showcase, vitrine',
    'pool table, billiard table, snooker table', 'pillow', 'screen door, screen', 'bookcase',
    'coffee table', 'toilet, can, commode, crapper, pot, potty, stool, throne', 'flower', 'book',
    'bench', 'countertop', 'stove', 'palm, palm tree', 'kitchen island', 'computer',
    'swivel chair', 'boat', 'arcade machine', 'bus', 'towel', 'light', 'truck', 'chandelier',
    'awning, sunshade, sunblind', 'street lamp', 'booth', 'tv', 'airplane', 'clothes', 'pole',
    'bannister, banister, balustrade, balusters, handrail', 'ottoman, pouf, pouffe, puff, hassock',
    'bottle', 'van', 'ship', 'fountain', 'washer, automatic washer, washing machine',
    'plaything, toy', 'stool', 'barrel, cask', 'basket, handbasket', 'bag', 'minibike, motorbike',
    'oven', 'ball', 'food, solid food', 'step, stair', 'trade name', 'microwave', 'pot', 'animal',
    'bicycle', 'dishwasher', 'screen', 'sculpture', 'hood, exhaust hood', 'sconce', 'vase',
    'traffic light', 'tray', 'trash can', 'fan', 'plate', 'monitor', 'bulletin board', 'radiator',
    'glass, drinking glass', 'clock', 'flag')
stuff_classes = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road, route', 'grass',
    'sidewalk, pavement', 'earth, ground', 'mountain, mount', 'plant', 'water', 'house', 'sea',
    'rug', 'field', 'rock, stone', 'base, pedestal, stand', 'sand', 'skyscraper',
    'grandstand, covered stand', 'path', 'runway', 'stairway, staircase', 'river', 'bridge, span',
    'blind, screen', 'hill', 'bar', 'hovel, hut, hutch, shack, shanty', 'tower', 'dirt track',
    'land, ground, soil', 'escalator, moving staircase, moving stairway',
    'buffet, counter, sideboard', 'poster, posting, placard, notice, bill, card', 'stage',
    'conveyer belt, conveyor belt, conveyer, conveyor, transporter', 'canopy', 'pool', 'falls',
    'tent', 'cradle', 'tank, storage tank', 'lake', 'blanket, cover', 'pier', 'crt screen',
    'shower')
palette = [
    (204, 5, 255), (230, 230, 230), (224, 5, 255), (150, 5, 61), (8, 255, 51), (255, 6, 82),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (255, 6, 51), (11, 102, 255), (255, 7, 71),
    (220, 220, 220), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (0, 255, 20), (255, 8, 41),
    (255, 5, 153), (6, 51, 255), (235, 12, 255), (0, 163, 255), (250, 10, 15), (20, 255, 0),
    (255, 224, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (0, 255, 245),
    (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (194, 255, 0), (0, 143, 255),
    (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0),
    (255, 92, 0), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20), (0, 31, 255),
    (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82), (0, 112, 255),
    (51, 0, 255), (0, 122, 255), (255, 153, 0), (0, 255, 10), (163, 255, 0), (255, 235, 0),
    (8, 184, 170), (184, 0, 255), (255, 0, 31), (0, 214, 255), (255, 0, 112), (92, 255, 0),
    (70, 184, 160), (163, 0, 255), (71, 255, 0), (255, 0, 163), (255, 204, 0), (255, 0, 143),
    (133, 255, 0), (255, 0, 235), (245, 0, 255), (255, 0, 122), (255, 245, 0), (214, 255, 0),
    (0, 204, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255),
    (41, 255, 0), (173, 0, 255), (0, 245, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0),
    (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255), (120, 120, 120), (180, 120, 120),
    (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140), (4, 250, 7),
    (235, 255, 7), (120, 120, 70), (143, 255, 140), (204, 255, 4), (61, 230, 250), (255, 9, 224),
    (9, 7, 230), (255, 9, 92), (112, 9, 255), (255, 41, 10), (255, 122, 8), (160, 150, 20),
    (140, 140, 140), (31, 255, 0), (255, 31, 0), (153, 255, 0), (31, 0, 255), (11, 200, 200),
    (255, 82, 0), (0, 61, 255), (255, 102, 0), (0, 255, 153), (255, 0, 255), (255, 184, 184),
    (0, 10, 255), (0, 194, 255), (0, 255, 163), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (133, 0, 255), (0, 255, 92), (0, 184, 255), (0, 224, 255), (112, 224, 255), (153, 0, 255),
    (0, 255, 235), (10, 190, 212), (20, 0, 255), (71, 0, 255), (122, 0, 255), (0, 133, 255)]
metainfo = dict(classes=thing_classes + stuff_classes, thing_classes=thing_classes,
                stuff_classes=stuff_classes, palette=palette)

train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True, backend_args=backend_args),
    dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True,
         backend_args=backend_args),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomResize', scale=(2560, 640), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=image_size, crop_type='absolute', recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    dict(type='LoadPanopticAnnotations', backend_args=backend_args),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]

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
        ann_file='ade20k_panoptic_train.json',
        data_prefix=dict(img='images/training/', seg='ade20k_panoptic_train/'),
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
        ann_file='ade20k_panoptic_val.json',
        data_prefix=dict(img='images/validation/', seg='ade20k_panoptic_val/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader

# PQ (panopticapi definition), instance AP on the thing predictions, and mIoU of the
# semantic map derived from the panoptic prediction.
val_evaluator = [
    dict(type='FastCocoPanopticMetric',
         ann_file=data_root + 'ade20k_panoptic_val.json',
         seg_prefix=data_root + 'ade20k_panoptic_val/',
         backend_args=backend_args),
    dict(type='CocoMetric',
         ann_file=data_root + 'ade20k_instance_val.json',
         metric=['segm'],
         backend_args=backend_args),
    dict(type='PanopticSemSegMetric'),
]
test_evaluator = val_evaluator
