# Fig. 5 "w/o ds": only the last mask-decoder layer is supervised (no deep supervision);
# the paper shows slower convergence and a lower PQ at every schedule (curve only, no table).
# The earlier layers' class branches and mask heads then receive no gradient.
_base_ = '../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

model = dict(bbox_head=dict(deep_supervision=False))
find_unused_parameters = True
