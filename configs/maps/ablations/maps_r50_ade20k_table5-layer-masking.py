# Table 5 "Layer-Masking" (PQ 40.4, AP 27.4, mIoU 46.6): in training each retrieved item is
# masked with probability 0.25, drawn independently for every memory layer.
_base_ = '../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

model = dict(panoptic_head=dict(layer_masking=0.25))
