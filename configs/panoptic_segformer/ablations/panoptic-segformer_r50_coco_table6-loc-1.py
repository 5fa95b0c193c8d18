# Table 6, 1 location-decoder layer (PQ 47.7, PQ_th 51.1, PQ_st 42.5).
_base_ = '../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

model = dict(decoder=dict(num_layers=1))
