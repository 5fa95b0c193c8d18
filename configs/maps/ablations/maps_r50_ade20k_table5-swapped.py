# Table 5 "Swapped" (PQ 39.6, AP 26.9, mIoU 46.9): layers 0-2 read the object memory and
# layers 3-5 the scene memory.
_base_ = '../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

model = dict(panoptic_head=dict(swap_memory=True))
