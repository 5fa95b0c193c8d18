# Table 6 row 4, CLIP-CLS + DINO-Image (PQ 40.0, AP 27.0, mIoU 46.3): object values pooled
# from DINO ViT-B/16 patch tokens (224x224, 768-d; ../../_base_/memory/clip-cls_dino-image.py).
_base_ = '../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

dino_checkpoint = 'checkpoints/dino/dino_vitbase16_pretrain.pth'
memory = dict(root='work_dirs/memory/coco_train_dino-image',
              dense_encoder=dict(_delete_=True, type='DINODenseEncoder',
                                 pretrained=dino_checkpoint, image_size=224))
model = dict(panoptic_head=dict(object_memory_dims=768))
