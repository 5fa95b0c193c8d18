# Table 10, classes and masks of mask-decoder layer 1:
# PQ 48.8, PQ_th 54.3, PQ_st 40.5, 10.6 FPS (all 6 layers: PQ 49.6, 7.8 FPS).
# Inference only, the later layers are not run: test with the checkpoint of
# ../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py.
_base_ = '../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

model = dict(test_cfg=dict(mask_decoder_layer=1))
