# Memory for the bundled synthetic dataset on a CPU: the default design (CLS keys + TiledCLIP
# objects) with the smaller open_clip ViT-S/16 and 224-px tiles, random weights (no download).
memory = dict(
    root='work_dirs/memory/synthetic_train',
    key_encoder=dict(type='CLIPCLSEncoder', arch='ViT-S-16', pretrained=None, seed=0),
    dense_encoder=dict(type='TiledCLIPDenseEncoder', arch='ViT-S-16', pretrained=None, seed=0,
                       short_side=224, tile_size=224, tile_batch_size=16),
    index=dict(type='HNSW', M=16, ef_construction=100, ef_search=64),
    value_dtype='float16',
    build=dict(batch_size=8, chunk_size=32, num_workers=1),
    retrieval=dict(k=5, max_objects=40, random_sampling=None))
