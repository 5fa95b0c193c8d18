# Tiny CPU MAPS on the bundled synthetic panoptic dataset: exactly the tiny Mask2Former
# (configs/mask2former/mask2former_r18_synthetic-panoptic.py: ResNet-18 from random init,
# 64-d, 20 queries, 6 decoder layers, same seed, iterations and schedule) plus the memory of
# ../_base_/memory/synthetic_tiled-clip_vit-s16.py (open_clip ViT-S/16 CLS keys + TiledCLIP
# objects, random weights, 384-d values). The paper's 3/3/3 split of 9 decoder layers becomes
# 2/2/2 here: layers 0-1 read the scene memory, 2-3 the object memory, 4-5 are plain.
#   python tools/build_memory.py configs/maps/maps_r18_synthetic-panoptic.py
#   python tools/train.py configs/maps/maps_r18_synthetic-panoptic.py
_base_ = [
    '../mask2former/mask2former_r18_synthetic-panoptic.py',
    '../_base_/memory/synthetic_tiled-clip_vit-s16.py',
]

model = dict(
    type='MAPS',
    panoptic_head=dict(
        type='MAPSMask2FormerHead',
        scene_layers=(0, 1),
        object_layers=(2, 3),
        scene_memory_dims=384,  # ViT-S/16 CLS embedding
        object_memory_dims=384,  # TiledCLIP ViT-S/16 features
        memory_num_heads=1))

custom_hooks = [dict(type='MemoryHook')]
