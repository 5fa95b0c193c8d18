# MAPS-Aug-CLS on ADE20K (paper Table 2: PQ 41.1, AP 27.3, mIoU 48.3): MAPS-Aug plus the
# image's own CLIP CLS embedding appended to the retrieved scene memory.
_base_ = './maps-aug_r50_8xb2-lsj-160k_ade20k-panoptic.py'

model = dict(panoptic_head=dict(aug_cls=True))
