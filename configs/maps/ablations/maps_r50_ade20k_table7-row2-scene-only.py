# Table 7 row 2, object memory off at inference (PQ 40.2, AP 26.7, mIoU 46.7).
# Test-time only: tools/test.py THIS_CONFIG CKPT_OF_../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py
_base_ = '../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

model = dict(panoptic_head=dict(use_object_memory=False))
