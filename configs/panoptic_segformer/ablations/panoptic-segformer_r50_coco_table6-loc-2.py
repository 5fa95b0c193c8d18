# Table 6, 2 location-decoder layers (PQ 48.1, PQ_th 51.8, PQ_st 42.5).
_base_ = '../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

model = dict(decoder=dict(num_layers=2))
