# The paper's memory of COCO train2017 panoptic (118k images): CLIP ViT-B/16 CLS + TiledCLIP.
#   python tools/build_memory.py configs/memory/memory_tiled-clip_vit-b16_coco-panoptic.py
#   torchrun --nproc_per_node 8 tools/build_memory.py configs/memory/...   (one shard per GPU)
_base_ = ['mmdet::_base_/datasets/coco_panoptic.py', '../_base_/memory/clip-cls_tiled-clip.py']
custom_imports = dict(imports=['mmmaps'], allow_failed_imports=False)
