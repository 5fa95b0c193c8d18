# Table 4 "Mask2Former (6)" (Params 45.6, PQ 39.8, AP 26.4, mIoU 46.1): Mask2Former with an
# extra attention sublayer (Eq. 1 over the queries themselves, no memory) in decoder layers
# 0-5, the layers where MAPS has memory attention; same schedule as MAPS. No memory, no hook.
_base_ = '../baselines/mask2former_r50_8xb2-lsj-160k-step_ade20k-panoptic.py'

model = dict(panoptic_head=dict(type='MAPSMask2FormerHead', scene_layers=(), object_layers=(),
                                extra_self_attn_layers=(0, 1, 2, 3, 4, 5)))
