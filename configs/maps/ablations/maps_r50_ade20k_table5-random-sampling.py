# Table 5 "Random-Sampling" (PQ 40.5, AP 27.2, mIoU 47.5): in training, k=5 retrievals
# sampled from the top k'=10 at every iteration (k' is not given in the paper); test: top 5.
_base_ = '../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

memory = dict(retrieval=dict(random_sampling=10))
