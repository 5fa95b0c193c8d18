# Table 7 row 3, scene memory off at inference (PQ 34.1, AP 25.6, mIoU 41.9).
# Test-time only: tools/test.py THIS_CONFIG CKPT_OF_../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py
_base_ = '../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

model = dict(panoptic_head=dict(use_scene_memory=False))
