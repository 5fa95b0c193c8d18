# Table B.5, a single attention head in the mask decoder (PQ 49.2, PQ_th 54.0, PQ_st 42.0;
# 8 heads: PQ 49.6). The mask FC head then reads 1 head x 3 levels.
_base_ = '../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

model = dict(bbox_head=dict(mask_decoder=dict(layer_cfg=dict(num_heads=1))))
