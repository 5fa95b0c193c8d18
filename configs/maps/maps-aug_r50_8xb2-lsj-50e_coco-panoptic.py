# MAPS-Aug on COCO (not in the paper, which reports the Aug variants on ADE20K and Cityscapes
# only): random sampling (k=5 of the top k'=10 retrievals in training) + input masking (each
# retrieved item masked with probability 0.25, once per forward pass), as in section 4.5.
_base_ = './maps_r50_8xb2-lsj-50e_coco-panoptic.py'

memory = dict(retrieval=dict(random_sampling=10))
model = dict(panoptic_head=dict(input_masking=0.25))
