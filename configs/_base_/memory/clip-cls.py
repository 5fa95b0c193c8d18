# Table 6 row 1: CLIP CLS keys and scene memory only (no object bank).
_base_ = './clip-cls_tiled-clip.py'
memory = dict(dense_encoder=None)
