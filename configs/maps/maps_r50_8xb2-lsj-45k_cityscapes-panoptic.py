# MAPS R50 on Cityscapes panoptic, 45k iterations (paper Table 3, MAPS row: PQ 60.7, AP 34.6,
# mIoU 77.9): Mask2Former's Cityscapes recipe (512x1024 crops, batch 16, AdamW 1e-4, poly LR)
# over 45k iterations (./baselines/mask2former_r50_8xb2-lsj-45k_cityscapes-panoptic.py, the
# "Mask2Former† 45K" row) with the default memory (CLIP ViT-B/16 CLS keys/scene values,
# TiledCLIP object values, k=5) of the COCO training set (section 3.2). Layers 0-2 read the
# scene memory, 3-5 the object memory, 6-8 are plain.
#   python tools/build_memory.py configs/maps/maps_r50_8xb2-lsj-45k_cityscapes-panoptic.py
#   bash tools/dist_train.sh configs/maps/maps_r50_8xb2-lsj-45k_cityscapes-panoptic.py 8
_base_ = [
    './baselines/mask2former_r50_8xb2-lsj-45k_cityscapes-panoptic.py',
    '../_base_/memory/clip-cls_tiled-clip.py',
]

# The paper's memory (section 3.2): COCO train2017, the same banks as the COCO MAPS
# (memory.root = work_dirs/memory/coco_train from the memory base). Own-dataset memory:
# ./ablations/maps_r50_cityscapes_own-memory.py.
memory = dict(
    dataset_config='{{fileDirname}}/../memory/memory_tiled-clip_vit-b16_coco-panoptic.py')
model = dict(
    type='MAPS',
    panoptic_head=dict(
        type='MAPSMask2FormerHead',
        scene_layers=(0, 1, 2),
        object_layers=(3, 4, 5),
        scene_memory_dims=512,  # CLIP ViT-B/16 CLS embedding
        object_memory_dims=512,  # TiledCLIP ViT-B/16 features
        memory_num_heads=1))

custom_hooks = [dict(type='MemoryHook')]
