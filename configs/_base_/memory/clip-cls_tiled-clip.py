# MAPS memory, the paper's default (Table 6 row 6): CLIP ViT-B/16 CLS token as key and scene
# value, TiledCLIP dense features pooled under each ground-truth segment as object values.
# Weights: the OpenAI ViT-B/16 checkpoint in open_clip format, e.g. open_clip_pytorch_model.bin
# from the Hugging Face repo timm/vit_base_patch16_clip_224.openai, saved at clip_checkpoint
# (pretrained=None gives deterministic random weights, for tests only).
clip_checkpoint = 'checkpoints/open_clip/ViT-B-16-openai.bin'
memory = dict(
    root='work_dirs/memory/coco_train',
    key_encoder=dict(type='CLIPCLSEncoder', arch='ViT-B-16', pretrained=clip_checkpoint),
    dense_encoder=dict(type='TiledCLIPDenseEncoder', arch='ViT-B-16', pretrained=clip_checkpoint,
                       short_side=448, tile_size=224, tile_batch_size=32),
    # HNSW on L2-normalised keys, searched by inner product
    index=dict(type='HNSW', M=32, ef_construction=200, ef_search=128),
    value_dtype='float16',
    build=dict(batch_size=16, chunk_size=256, num_workers=4),
    # k=5 retrievals (Table 8); object slots of the k images, capped and padded
    retrieval=dict(k=5, max_objects=100, random_sampling=None))
