# Table B.4, t_cnf = 0.25, t_keep = 0.5: PQ 49.5, the smallest t_keep of the table (default
# t_keep = 0.6: PQ 49.7). Post-processing only: test with the checkpoint of
# ../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py; other cells: ../README.md.
_base_ = '../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

model = dict(test_cfg=dict(t_keep=0.5))
