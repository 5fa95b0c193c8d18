# COCO panoptic (133 classes: 80 things, 53 stuff): mmdet's dataset settings (CocoPanopticDataset
# with its own metainfo, data/coco/ layout of data/README.md) with the three evaluators every
# mmmaps config reports: PQ (panopticapi definition), instance AP on the thing predictions, and
# mIoU of the semantic map derived from the panoptic prediction.
_base_ = 'mmdet::_base_/datasets/coco_panoptic.py'

data_root = 'data/coco/'
backend_args = None

val_evaluator = [
    dict(type='FastCocoPanopticMetric',
         ann_file=data_root + 'annotations/panoptic_val2017.json',
         seg_prefix=data_root + 'annotations/panoptic_val2017/',
         backend_args=backend_args),
    dict(type='CocoMetric',
         ann_file=data_root + 'annotations/instances_val2017.json',
         metric=['segm'],
         backend_args=backend_args),
    dict(type='PanopticSemSegMetric'),
]
test_evaluator = val_evaluator
