# Table 8 "Ours (Joint Matching)" (PQ 48.5, PQ_th 54.5, PQ_st 39.5, AP_box 44.1, AP_seg 37.7),
# = Table 5 "+++ mask decoder" (24 epochs, PQ 48.5, 51.0M params, 214.8G FLOPs, 7.8 FPS):
# no query decoupling. One set of 353 queries (as many as 300 thing + 53 stuff queries)
# goes through the location decoder and the mask decoder and is matched to things and
# stuff together (stuff boxes from their masks); every query classifies all 133 classes.
_base_ = '../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

model = dict(num_queries=353, bbox_head=dict(query_decoupling=False))
