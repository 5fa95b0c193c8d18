# Table 4 "Mask2Former (9)" (Params 46.4M, PQ 40.6, AP 27.3, mIoU 46.5): an extra attention
# sublayer (no memory) in all 9 decoder layers; same schedule as MAPS. No memory, no hook.
_base_ = './mask2former_r50_ade20k_table4-extra6.py'

model = dict(panoptic_head=dict(extra_self_attn_layers=(0, 1, 2, 3, 4, 5, 6, 7, 8)))
