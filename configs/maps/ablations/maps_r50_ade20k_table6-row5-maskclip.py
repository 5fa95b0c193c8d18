# Table 6 row 5, CLIP-CLS + MaskCLIP-Image (PQ 40.1, AP 26.9, mIoU 46.2): object values from
# MaskCLIP ViT-B/16 (short side 448, 512-d; ../../_base_/memory/clip-cls_maskclip.py).
_base_ = '../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

memory = dict(root='work_dirs/memory/coco_train_maskclip',
              dense_encoder=dict(_delete_=True, type='MaskCLIPDenseEncoder', arch='ViT-B-16',
                                 pretrained={{_base_.clip_checkpoint}}, short_side=448))
