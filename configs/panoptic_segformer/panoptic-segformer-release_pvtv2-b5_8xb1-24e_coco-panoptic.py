# Panoptic SegFormer PVTv2-B5 (ImageNet-22K) as the authors' release builds it (see the release R50
# config); the release raises t_cnf to 0.3 for things and stuff with this backbone.
_base_ = [
    './panoptic-segformer-release_r50_8xb1-24e_coco-panoptic.py',
    '../_base_/backbones/pvtv2-b5.py',
]

model = dict(backbone={{_base_.pvtv2_b5_backbone}},
             neck=dict(in_channels={{_base_.pvtv2_b5_channels}}),
             test_cfg=dict(t_cnf=0.3))
