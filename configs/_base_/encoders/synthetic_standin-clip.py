# The memory of the tiny synthetic MAPS built by the *pretrained stand-in* for CLIP:
# mmmaps-ViT-Ti-16-112 (open_clip ViT, width 192, 6 layers, 16-px patches at 112 px, 192-d
# embeddings) pretrained self-supervised on 4000 unlabelled generated images by
# tools/pretrain_encoder.py. Variables, not a `memory` section: a config over a tiny MAPS
# merges them into its memory (`memory = {{_base_.standin_memory}}`) and dims.
standin_checkpoint = 'work_dirs/encoders/standin-clip_vit-ti16-112_synthetic-pool.pt'
standin_memory = dict(
    root='work_dirs/memory/synthetic_train_standin-clip',
    key_encoder=dict(arch='mmmaps-ViT-Ti-16-112', pretrained=standin_checkpoint,
                     image_size=112),
    dense_encoder=dict(arch='mmmaps-ViT-Ti-16-112', pretrained=standin_checkpoint,
                       short_side=224, tile_size=112, tile_batch_size=32))
standin_dims = 192
