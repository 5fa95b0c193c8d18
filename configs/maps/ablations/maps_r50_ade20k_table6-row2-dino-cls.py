# Table 6 row 2, DINO-CLS only (PQ 39.7, AP 26.7, mIoU 46.0): DINO ViT-B/16 CLS keys and
# scene values (768-d; memory base ../../_base_/memory/dino-cls.py), no object bank.
_base_ = '../maps_r50_8xb2-lsj-160k_ade20k-panoptic.py'

dino_checkpoint = 'checkpoints/dino/dino_vitbase16_pretrain.pth'
memory = dict(root='work_dirs/memory/coco_train_dino-cls', dense_encoder=None,
              key_encoder=dict(_delete_=True, type='DINOCLSEncoder', pretrained=dino_checkpoint))
model = dict(panoptic_head=dict(object_layers=(), scene_memory_dims=768))
