# Build the memory of the synthetic dataset on its own:
#   python tools/build_memory.py configs/memory/memory_tiled-clip_vit-s16_synthetic-panoptic.py
# (MAPS configs carry the same `memory` section, so they can be passed instead.)
_base_ = ['../_base_/datasets/synthetic_panoptic.py',
          '../_base_/memory/synthetic_tiled-clip_vit-s16.py']
custom_imports = dict(imports=['mmmaps'], allow_failed_imports=False)
