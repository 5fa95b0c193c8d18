# Appendix B.3: "discarding the self-attention in the decoder does not affect the
# effectiveness of the model" (no number given). This puts it back: self-attention (8
# heads) before the cross-attention in every mask-decoder layer; thing and stuff queries
# do not attend to each other.
_base_ = '../panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'

model = dict(bbox_head=dict(mask_decoder=dict(layer_cfg=dict(self_attn=True))))
