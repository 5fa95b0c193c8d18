# MAPS-Aug-CLS on COCO (not in the paper): MAPS-Aug plus the image's own CLIP CLS embedding
# appended to the retrieved scene memory.
_base_ = './maps-aug_r50_8xb2-lsj-50e_coco-panoptic.py'

model = dict(panoptic_head=dict(aug_cls=True))
