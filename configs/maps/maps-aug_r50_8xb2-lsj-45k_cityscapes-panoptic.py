# MAPS-Aug on Cityscapes, 45k iterations (paper Table 3: PQ 61.0, AP 34.2, mIoU 78.1): random
# sampling (k=5 of the top k'=10 retrievals, resampled every training iteration) + input
# masking (each retrieved item masked with probability 0.25, once per forward pass).
_base_ = './maps_r50_8xb2-lsj-45k_cityscapes-panoptic.py'

memory = dict(retrieval=dict(random_sampling=10))
model = dict(panoptic_head=dict(input_masking=0.25))
