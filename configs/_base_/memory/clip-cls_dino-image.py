# Table 6 row 4: CLIP CLS keys; object values from DINO ViT-B/16 patch tokens (224x224 input).
_base_ = './clip-cls_tiled-clip.py'
dino_checkpoint = 'checkpoints/dino/dino_vitbase16_pretrain.pth'
memory = dict(dense_encoder=dict(_delete_=True, type='DINODenseEncoder',
                                 pretrained=dino_checkpoint, image_size=224))
