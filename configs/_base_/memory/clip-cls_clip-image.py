# Table 6 row 3: CLIP CLS keys; object values from one 224x224 CLIP pass (14x14 grid).
_base_ = './clip-cls_tiled-clip.py'
memory = dict(dense_encoder=dict(_delete_=True, type='CLIPImageDenseEncoder', arch='ViT-B-16',
                                 pretrained={{_base_.clip_checkpoint}}, image_size=224))
