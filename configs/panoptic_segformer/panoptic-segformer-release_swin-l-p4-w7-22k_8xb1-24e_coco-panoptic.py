# Panoptic SegFormer Swin-L (ImageNet-22K, window 7) as the authors' release builds it
# (see the release R50 config); the release raises t_cnf to 0.3 for things and stuff
# with this backbone.
_base_ = [
    './panoptic-segformer-release_r50_8xb1-24e_coco-panoptic.py',
    '../_base_/backbones/swin-l-p4-w7-22k.py',
]

model = dict(backbone={{_base_.swin_l_backbone}},
             neck=dict(in_channels={{_base_.swin_l_channels}}),
             test_cfg=dict(t_cnf=0.3))
