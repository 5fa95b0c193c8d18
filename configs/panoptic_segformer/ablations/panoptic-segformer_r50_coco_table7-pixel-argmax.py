# Table 7 "Panoptic SegFormer (p)" = Table B.2 "Pixel-wise Argmax": PQ 48.4 (SQ 80.7,
# RQ 58.9; PQ_th 53.2, PQ_st 41.3; Boundary PQ 39.3); mask-wise merging "(m)", the default,
# is PQ 49.6. DETR's rule: every pixel goes to the query (of those whose class probability
# p_i >= t_cnf) with the largest mask probability; no 0.5 mask threshold, no t_keep.
# Post-processing only: test with the checkpoint of
# ../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py (tools/test.py).
_base_ = '../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

model = dict(test_cfg=dict(merge='pixel_argmax'))
