# Table 6 row 5: CLIP CLS keys; object values from MaskCLIP (value embedding of the last block).
_base_ = './clip-cls_tiled-clip.py'
memory = dict(dense_encoder=dict(_delete_=True, type='MaskCLIPDenseEncoder', arch='ViT-B-16',
                                 pretrained={{_base_.clip_checkpoint}}, short_side=448))
