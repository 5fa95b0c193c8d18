# MAPS R50 on ADE20K panoptic (paper Table 2, MAPS row: PQ 40.7, AP 27.0, mIoU 47.0; the
# same model is Table 4 "MAPS (6)", Table 5 "None", Table 6 row 6, Table 7 row 4 and Table 8
# k=5): Mask2Former's ADE20K recipe (640 crops, batch 16, AdamW 1e-4, 160k iterations) with
# the paper's ADE20K schedule (constant LR, x0.1 at 100k and 140k; section 4.3) and the
# default memory (CLIP ViT-B/16 CLS keys/scene values, TiledCLIP object values, k=5) of the
# COCO training set (section 3.2). Layers 0-2 read the scene memory, 3-5 the object memory,
# 6-8 plain.
#   python tools/build_memory.py configs/maps/maps_r50_8xb2-lsj-160k_ade20k-panoptic.py
#   bash tools/dist_train.sh configs/maps/maps_r50_8xb2-lsj-160k_ade20k-panoptic.py 8
_base_ = [
    './baselines/mask2former_r50_8xb2-lsj-160k-step_ade20k-panoptic.py',
    '../_base_/memory/clip-cls_tiled-clip.py',
]

# The paper's memory (section 3.2): COCO train2017, the same banks as the COCO MAPS
# (memory.root = work_dirs/memory/coco_train from the memory base). Own-dataset memory:
# ./ablations/maps_r50_ade20k_own-memory.py.
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
