# Table 8, 1 retrieval (PQ 39.7, AP 26.7, mIoU 46.4).
_base_ = '../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

memory = dict(retrieval=dict(k=1))
