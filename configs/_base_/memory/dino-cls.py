# Table 6 row 2: DINO ViT-B/16 CLS keys and scene memory only (no object bank).
# Weights: dino_vitbase16_pretrain.pth from
# https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth
_base_ = './clip-cls_tiled-clip.py'
dino_checkpoint = 'checkpoints/dino/dino_vitbase16_pretrain.pth'
memory = dict(
    key_encoder=dict(_delete_=True, type='DINOCLSEncoder', pretrained=dino_checkpoint),
    dense_encoder=None)
