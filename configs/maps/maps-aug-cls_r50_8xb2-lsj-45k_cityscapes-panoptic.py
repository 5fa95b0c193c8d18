# MAPS-Aug-CLS on Cityscapes, 45k iterations (paper Table 3: PQ 61.0, AP 35.6, mIoU 79.1):
# MAPS-Aug plus the image's own CLIP CLS embedding appended to the retrieved scene memory.
_base_ = './maps-aug_r50_8xb2-lsj-45k_cityscapes-panoptic.py'

model = dict(panoptic_head=dict(aug_cls=True))
