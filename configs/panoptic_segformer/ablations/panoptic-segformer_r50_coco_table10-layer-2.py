# Table 10, classes and masks of mask-decoder layer 2:
# PQ 49.5, PQ_th 54.5, PQ_st 42.0, 9.8 FPS (all 6 layers: PQ 49.6, 7.8 FPS).
# Inference only, the later layers are not run: test with the checkpoint of
# ../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py.
_base_ = '../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

model = dict(test_cfg=dict(mask_decoder_layer=2))
