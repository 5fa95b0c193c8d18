# Table 5 "Input-Masking" (PQ 41.3, AP 27.4, mIoU 47.5): in training each retrieved item is
# masked with probability 0.25 (not given in the paper), drawn once per forward pass and
# shared by all memory layers.
_base_ = '../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

model = dict(panoptic_head=dict(input_masking=0.25))
