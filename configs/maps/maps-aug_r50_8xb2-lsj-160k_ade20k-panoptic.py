# MAPS-Aug on ADE20K (paper Table 2: PQ 41.0, AP 27.3, mIoU 48.6): random sampling (k=5 of
# the top k'=10 retrievals, resampled every training iteration) + input masking (each
# retrieved item masked with probability 0.25, drawn once per forward pass; section 4.5).
_base_ = './maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

memory = dict(retrieval=dict(random_sampling=10))
model = dict(panoptic_head=dict(input_masking=0.25))
