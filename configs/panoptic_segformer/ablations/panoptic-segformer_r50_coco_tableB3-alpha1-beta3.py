# Table B.3, alpha = 1, beta = 3 in Eq. 6 (PQ 49.7, PQ_th 54.5, PQ_st 42.2; default alpha = 1,
# beta = 2: PQ 49.6). Post-processing only: test with the checkpoint of
# ../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py (tools/test.py).
_base_ = '../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

model = dict(test_cfg=dict(alpha=1.0, beta=3.0))
