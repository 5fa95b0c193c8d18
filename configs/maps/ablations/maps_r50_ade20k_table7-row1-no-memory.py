# Table 7 row 1, scene and object memory both off at inference (PQ 33.3, AP 24.4, mIoU 40.3).
# Test-time only: tools/test.py THIS_CONFIG CKPT_OF_../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py
_base_ = '../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

model = dict(panoptic_head=dict(use_scene_memory=False, use_object_memory=False))
