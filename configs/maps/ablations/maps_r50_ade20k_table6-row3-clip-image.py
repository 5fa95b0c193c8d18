# Table 6 row 3, CLIP-CLS + CLIP-Image (PQ 39.6, AP 26.6, mIoU 45.9): object values pooled
# from one 224x224 CLIP ViT-B/16 pass (14x14 grid, 512-d; ../../_base_/memory/clip-cls_clip-image.py).
_base_ = '../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

memory = dict(root='work_dirs/memory/coco_train_clip-image',
              dense_encoder=dict(_delete_=True, type='CLIPImageDenseEncoder', arch='ViT-B-16',
                                 pretrained={{_base_.clip_checkpoint}}, image_size=224))
