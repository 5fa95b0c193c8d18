# MAPS R50 on COCO panoptic (paper Table 1, MAPS row: PQ 52.0, AP 41.7, mIoU 62.1):
# Mask2Former R50 (mmdet's COCO recipe: 100 queries, 9 decoder layers, 1024 LSJ crops,
# batch 16, AdamW 1e-4, 368,750 iterations, x0.1 steps at 327,778 and 355,092) with the
# paper's default memory (../_base_/memory/clip-cls_tiled-clip.py: frozen CLIP ViT-B/16 CLS
# keys and scene values, TiledCLIP object values, HNSW, k=5). Decoder layers 0-2 read the
# scene memory, 3-5 the object memory, 6-8 are plain Mask2Former layers (section 3.3).
#   python tools/build_memory.py configs/maps/maps_r50_8xb2-lsj-50e_coco-panoptic.py
#   bash tools/dist_train.sh configs/maps/maps_r50_8xb2-lsj-50e_coco-panoptic.py 8
_base_ = [
    '../mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py',
    '../_base_/memory/clip-cls_tiled-clip.py',
]

# memory.root = work_dirs/memory/coco_train (from the memory base): the same bank as
# configs/memory/memory_tiled-clip_vit-b16_coco-panoptic.py builds.
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
