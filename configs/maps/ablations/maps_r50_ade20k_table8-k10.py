# Table 8, 10 retrievals (PQ 40.5, AP 27.1, mIoU 46.9). The object-slot cap grows with k
# (100 for 5 images -> 200 for 10) so it truncates no more objects per image than at k=5.
_base_ = '../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

memory = dict(retrieval=dict(k=10, max_objects=200))
