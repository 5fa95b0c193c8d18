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
_base_ = ['./maps_r18_synthetic-panoptic.py']

standin_checkpoint = 'work_dirs/encoders/standin-clip_vit-ti16-112_synthetic-pool.pt'
memory = dict(
    root='work_dirs/memory/synthetic_train_standin-clip',
    key_encoder=dict(arch='mmmaps-ViT-Ti-16-112', pretrained=standin_checkpoint,
                     image_size=112),
    dense_encoder=dict(arch='mmmaps-ViT-Ti-16-112', pretrained=standin_checkpoint,
                       short_side=224, tile_size=112, tile_batch_size=32))

model = dict(
    panoptic_head=dict(scene_memory_dims=192, object_memory_dims=192))
