# Mask2Former R50 on COCO panoptic (133 classes: 80 things, 53 stuff): mmdet's own config
# plus mIoU of the panoptic output, so one test run reports PQ, AP and mIoU as in the
# MAPS paper (Table 1, Mask2Former† row: PQ 51.7, AP 41.7, mIoU 61.0).
_base_ = 'mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py'
custom_imports = dict(imports=['mmmaps'], allow_failed_imports=False)

data_root = 'data/coco/'
# ImageNet weights: mmdet's base downloads 'torchvision://resnet50'. Without internet, put
# the file next to the data and point here, e.g.
#   --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/resnet50-0676ba61.pth
model = dict(test_cfg=dict(panoptic_on=True, semantic_on=False, instance_on=True))

val_evaluator = [
    dict(type='FastCocoPanopticMetric',
         ann_file=data_root + 'annotations/panoptic_val2017.json',
         seg_prefix=data_root + 'annotations/panoptic_val2017/',
         backend_args=None),
    dict(type='CocoMetric',
         ann_file=data_root + 'annotations/instances_val2017.json',
         metric=['segm'],
         backend_args=None),
    dict(type='PanopticSemSegMetric'),
]
test_evaluator = val_evaluator
