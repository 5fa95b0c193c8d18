# Tiny CPU MAPS whose memory is built by the *pretrained stand-in* for CLIP (README command 1,
# benchmarks/maps_low_label.py): exactly ./maps_r18_synthetic-panoptic.py, with the random-init
# ViT-S/16 of its memory replaced by mmmaps-ViT-Ti-16-112 (open_clip ViT, width 192, 6 layers,
# 16-px patches at 112 px, 192-d embeddings) pretrained self-supervised on 4000 unlabelled
# generated images by tools/pretrain_encoder.py (SimCLR, ~7 min on 2 cores, cached):
#   python tools/pretrain_encoder.py
#   python tools/build_memory.py configs/maps/maps_r18_synthetic-panoptic_standin-clip.py
#   python tools/train.py configs/maps/maps_r18_synthetic-panoptic_standin-clip.py
# It is a stand-in: it knows the generator's 4 scene types from unlabelled images, the way CLIP
# knows real scenes from web images; it is not CLIP.
_base_ = ['./maps_r18_synthetic-panoptic.py', '../_base_/encoders/synthetic_standin-clip.py']

memory = {{_base_.standin_memory}}
model = dict(
    panoptic_head=dict(scene_memory_dims={{_base_.standin_dims}},
                       object_memory_dims={{_base_.standin_dims}}))
