# Table 6 row 1, CLIP-CLS only (PQ 40.3, AP 27.2, mIoU 47.0): scene memory only (memory base
# ../../_base_/memory/clip-cls.py); no object bank, so layers 3-5 are plain as well.
_base_ = '../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

memory = dict(root='work_dirs/memory/coco_train_clip-cls', dense_encoder=None)
model = dict(panoptic_head=dict(object_layers=()))
