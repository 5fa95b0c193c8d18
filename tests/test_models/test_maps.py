"""MAPS: memory cross-attention, the memory head, the detector and its augmentations."""
import copy
import hashlib
import json
import logging
import math
import os
import os.path as osp
import random
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from PIL import Image

from mmdet.registry import DATASETS, HOOKS, MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules

from mmmaps.memory import (MemoryBankError, RetrievalResult, build_external_memory,
                           build_memory_encoder)
from mmmaps.models import MemoryCrossAttention
from mmmaps.models.dense_heads import MemoryInputs
from mmmaps.utils.checkpoint_loading import safe_torch_load

from ..conftest import REPO_ROOT, TINY_M2F, build_tiny_memory, load_config_with_root

TINY_MAPS = osp.join(REPO_ROOT, 'configs', 'maps', 'maps_r18_synthetic-panoptic.py')


def reference_attention(query, memory, mask, attn):
    """Eq. 1 written out per batch element and head with explicit loops over slots."""
    out = query.clone()
    heads = attn.num_heads
    d = attn.embed_dims // heads
    q = attn.q_proj(query)
    k = attn.k_proj(memory)
    v = attn.v_proj(memory)
    for b in range(query.shape[0]):
        keep = [j for j in range(memory.shape[1]) if mask is None or not mask[b, j]]
        if not keep:
            continue
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            logits = torch.stack([q[b, :, sl] @ k[b, j, sl] for j in keep], dim=1) / math.sqrt(d)
            weights = torch.softmax(logits, dim=1)
            out[b, :, sl] = out[b, :, sl] + weights @ v[b, keep, sl]
    return out


@pytest.mark.parametrize('heads', [1, 4])
def test_memory_attention_matches_reference(heads):
    torch.manual_seed(0)
    attn = MemoryCrossAttention(embed_dims=16, memory_dims=24, num_heads=heads)
    query, memory = torch.randn(3, 5, 16), torch.randn(3, 7, 24)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, 4:] = True
    mask[2] = True  # no memory at all for this image
    out = attn(query, memory, mask)
    torch.testing.assert_close(out, reference_attention(query, memory, mask, attn), atol=1e-5,
                               rtol=1e-5)
    assert torch.equal(out[2], query[2])
    # padded slots get zero weight: changing their content changes nothing
    noisy = memory.clone()
    noisy[0, 4:] = 100 * torch.randn(3, 24)
    torch.testing.assert_close(attn(query, noisy, mask), out)
    # gradients reach f_Q, f_K, f_V
    out.sum().backward()
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def _plain_head_cfg():
    """The tiny baseline's Mask2FormerHead config."""
    cfg = Config.fromfile(TINY_M2F)
    head = copy.deepcopy(cfg.model.panoptic_head)
    head.update(train_cfg=cfg.model.train_cfg, test_cfg=cfg.model.test_cfg)
    return head


def tiny_head_cfg(**maps_args):
    head = _plain_head_cfg()
    head.update(type='MAPSMask2FormerHead', **maps_args)
    return head


def head_inputs(batch=2):
    torch.manual_seed(1)
    feats = [torch.randn(batch, c, 32 // s, 32 // s)
             for c, s in zip([64, 128, 256, 512], [1, 2, 4, 8])]
    samples = [DetDataSample(metainfo=dict(batch_input_shape=(128, 128), img_shape=(128, 128)))
               for _ in range(batch)]
    return feats, samples


def random_memory(batch=2, dims=384, scene=5, objects=9):
    torch.manual_seed(2)
    object_mask = torch.zeros(batch, objects, dtype=torch.bool)
    object_mask[0, 6:] = True
    return MemoryInputs(scene=torch.randn(batch, scene, dims),
                        scene_mask=torch.zeros(batch, scene, dtype=torch.bool),
                        objects=torch.randn(batch, objects, dims), object_mask=object_mask,
                        query_keys=torch.randn(batch, dims))


def random_retrieval(batch=2, dims=384, scene=5, objects=9, padded=False, seed=2):
    """A RetrievalResult of random memory (``padded``: every slot is padding)."""
    generator = torch.Generator().manual_seed(seed)
    scene_mask = torch.full((batch, scene), padded)
    object_mask = torch.full((batch, objects), padded)
    object_mask[0, 6:] = True
    ids = torch.arange(batch * scene).view(batch, scene)
    return RetrievalResult(
        scene_values=torch.randn(batch, scene, dims, generator=generator),
        scene_mask=scene_mask, image_ids=ids, scores=torch.rand(batch, scene),
        rows=ids.clone(), object_values=torch.randn(batch, objects, dims, generator=generator),
        object_mask=object_mask,
        object_category_ids=torch.zeros(batch, objects, dtype=torch.int64),
        object_image_ids=torch.zeros(batch, objects, dtype=torch.int64),
        query_keys=torch.randn(batch, dims, generator=generator),
        keys_from_cache=torch.zeros(batch, dtype=torch.bool))


def with_retrieval(samples, result):
    """Copies of ``samples``, sample i carrying ``result.select(i)`` as MAPS puts it."""
    out = []
    for i, sample in enumerate(samples):
        sample = sample.clone()
        sample.set_metainfo(dict(retrieval=result.select(i)))
        out.append(sample)
    return out


def outputs_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1]))


def test_memory_off_is_exactly_mask2former():
    register_all_modules()
    baseline = MODELS.build(_plain_head_cfg())
    maps = MODELS.build(tiny_head_cfg(scene_layers=[0, 1], object_layers=[2, 3],
                                      scene_memory_dims=384, object_memory_dims=384))
    missing, unexpected = maps.load_state_dict(baseline.state_dict(), strict=False)
    assert not unexpected and all('memory_attn' in k for k in missing)
    assert maps.extra_params == sum(p.numel() for k, p in maps.named_parameters()
                                    if 'memory_attn' in k)
    baseline.eval()
    maps.eval()
    feats, samples = head_inputs()
    with torch.no_grad():
        expected = baseline(feats, samples)  # mmdet's Mask2FormerHead
        # a retrieval whose every slot is padding adds nothing
        got = maps(feats, with_retrieval(samples, random_retrieval(padded=True)))
        assert outputs_equal(expected, got)
        # each decoder layer called with memory=None is mmdet's layer
        query = torch.randn(2, 20, 64)
        key = torch.randn(2, 16, 64)
        for plain, layer in zip(baseline.transformer_decoder.layers,
                                maps.transformer_decoder.layers):
            assert torch.equal(plain(query=query, key=key, value=key),
                               layer(query=query, key=key, value=key, memory=None))
        maps.use_scene_memory = maps.use_object_memory = False  # Table 7 row 1
        assert not maps.needs_memory
        got = maps(feats, with_retrieval(samples, random_retrieval()))
        assert outputs_equal(expected, got)
        got = maps(feats, samples)  # no memory read, none needed
        assert outputs_equal(expected, got)
        maps.use_scene_memory = maps.use_object_memory = True
        changed = maps(feats, with_retrieval(samples, random_retrieval()))
        assert not torch.allclose(expected[0][-1], changed[0][-1])
        # the head reads the memory the samples bring; none is an error, not a silent no-op
        with pytest.raises(KeyError, match='carry no metainfo'):
            maps(feats, samples)


def layer_memories(head):
    """Context: {decoder layer index: the ``memory`` argument it was called with}."""
    import contextlib

    @contextlib.contextmanager
    def recording():
        seen = {}

        def record(index):
            def hook(module, args, kwargs):
                seen[index] = kwargs.get('memory')
            return hook

        handles = [layer.register_forward_pre_hook(record(i), with_kwargs=True)
                   for i, layer in enumerate(head.transformer_decoder.layers)]
        try:
            yield seen
        finally:
            for handle in handles:
                handle.remove()
    return recording()


def test_head_hands_each_layer_the_memory_of_its_samples():
    register_all_modules()
    head = MODELS.build(tiny_head_cfg(scene_layers=[0, 1], object_layers=[2, 3],
                                      scene_memory_dims=384, object_memory_dims=384))
    head.eval()
    feats, samples = head_inputs()
    retrieval = random_retrieval()
    with layer_memories(head) as seen, torch.no_grad():
        out = head(feats, with_retrieval(samples, retrieval))
    for i in (0, 1):  # scene layers: the scene values and masks of the retrieval
        assert torch.equal(seen[i][0], retrieval.scene_values)
        assert torch.equal(seen[i][1], retrieval.scene_mask)
    for i in (2, 3):  # object layers
        assert torch.equal(seen[i][0], retrieval.object_values)
        assert torch.equal(seen[i][1], retrieval.object_mask)
    assert seen[4] is None and seen[5] is None

    # the memory travels with its sample: swap both images and their retrievals and the
    # outputs swap (image 0 with memory 1 ... is not what the batch computed)
    swapped = RetrievalResult.cat([retrieval.select(1), retrieval.select(0)])
    with torch.no_grad():
        out_swapped = head([f.flip(0) for f in feats], with_retrieval(samples, swapped))
        crossed = head(feats, with_retrieval(samples, swapped))
    for a, b in zip(out[0] + out[1], out_swapped[0] + out_swapped[1]):
        torch.testing.assert_close(a, b.flip(0), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0][-1], crossed[0][-1])


def test_layer_sources_swap_and_extra_layers():
    register_all_modules()
    head = MODELS.build(tiny_head_cfg(scene_layers=[0, 1], object_layers=[2, 3],
                                      scene_memory_dims=384, object_memory_dims=256,
                                      swap_memory=True))
    assert head.layer_sources == ['object', 'object', 'scene', 'scene', None, None]
    layers = head.transformer_decoder.layers
    assert layers[0].memory_attn.memory_dims == 256 and layers[2].memory_attn.memory_dims == 384
    assert layers[4].memory_attn is None
    extra = MODELS.build(tiny_head_cfg(scene_layers=[], object_layers=[],
                                       extra_self_attn_layers=[0, 1, 2, 3, 4, 5]))
    assert not extra.needs_memory
    assert all(layer.extra_attn is not None for layer in extra.transformer_decoder.layers)
    with pytest.raises(ValueError, match='overlap'):
        MODELS.build(tiny_head_cfg(scene_layers=[0, 1], object_layers=[1, 2]))
    with pytest.raises(ValueError, match='outside'):
        MODELS.build(tiny_head_cfg(scene_layers=[0, 6], object_layers=[]))


def test_masking_augmentations_and_aug_cls():
    register_all_modules()
    head = MODELS.build(tiny_head_cfg(scene_layers=[0, 1], object_layers=[2, 3],
                                      scene_memory_dims=384, object_memory_dims=384,
                                      input_masking=0.5, aug_cls=True))
    memory = random_memory(batch=4, scene=40, objects=40)
    head.train()
    per_layer = head._memory_per_layer(memory)
    scene0, scene1 = per_layer[0], per_layer[1]
    assert scene0[0].shape[1] == 41  # own CLS appended (Aug-CLS)
    assert torch.equal(scene0[0][:, -1], memory.query_keys)
    assert not scene0[1][:, -1].all()
    # input masking: one draw shared by every layer of a memory, padding kept
    assert torch.equal(scene0[1], scene1[1]) and 0 < scene0[1][:, :40].float().mean() < 1
    assert per_layer[2][1][memory.object_mask].all()
    head.eval()
    assert not head._memory_per_layer(memory)[0][1][:, :40].any()  # no masking at test
    head.input_masking, head.layer_masking = 0.0, 0.5
    head.train()
    per_layer = head._memory_per_layer(memory)
    assert not torch.equal(per_layer[0][1], per_layer[1][1])  # independent per layer


def test_input_masking_of_the_whole_memory():
    """input_masking_mode='memory': one draw per image masks all of its memory (scene, its
    own CLS and objects) or none of it, the same for every layer; 'item' masks items."""
    register_all_modules()
    head = MODELS.build(tiny_head_cfg(scene_layers=[0, 1], object_layers=[2, 3],
                                      scene_memory_dims=384, object_memory_dims=384,
                                      input_masking=0.5, input_masking_mode='memory',
                                      aug_cls=True))
    memory = random_memory(batch=200, scene=5, objects=9)
    head.train()
    torch.manual_seed(0)
    per_layer = head._memory_per_layer(memory)
    scene, objects = per_layer[0][1], per_layer[2][1]
    dropped = scene.all(dim=1)
    for b in range(200):
        if dropped[b]:
            assert objects[b].all()
        else:  # untouched: only the padding the retrieval had
            assert not scene[b].any() and torch.equal(objects[b], memory.object_mask[b])
    assert 0.35 < dropped.float().mean() < 0.65  # p = 0.5, 200 images
    assert torch.equal(per_layer[1][1], scene) and torch.equal(per_layer[3][1], objects)
    head.eval()
    assert not head._memory_per_layer(memory)[0][1].any()  # training only
    # 'item': masked items are spread over the images, almost no image loses all of them
    head.input_masking_mode = 'item'
    head.train()
    scene = head._memory_per_layer(memory)[0][1]
    assert 0.35 < scene.float().mean() < 0.65 and scene.all(dim=1).float().mean() < 0.1
    with pytest.raises(ValueError, match='input_masking_mode'):
        MODELS.build(tiny_head_cfg(input_masking_mode='image'))


def test_learned_memory_tokens_replace_the_retrieval():
    """learned_memory=(K_s, K_o): every memory layer attends to the same learned tokens for
    every image, no retrieval is read, and the tokens learn."""
    register_all_modules()
    head = MODELS.build(tiny_head_cfg(scene_layers=[0, 1], object_layers=[2, 3],
                                      scene_memory_dims=384, object_memory_dims=256,
                                      learned_memory=(5, 9)))
    assert not head.needs_memory
    attention = sum(p.numel() for k, p in head.named_parameters() if 'memory_attn' in k)
    assert head.extra_params == attention + 5 * 384 + 9 * 256
    feats, samples = head_inputs()
    head.train()
    with layer_memories(head) as seen:
        cls_scores, _ = head(feats, samples)  # no retrieval in the samples, none needed
    for i, name in ((0, 'scene'), (1, 'scene'), (2, 'object'), (3, 'object')):
        values, mask = seen[i]
        tokens = head.learned_memory[name].detach()
        assert values.shape[0] == 2 and all(torch.equal(v, tokens) for v in values)
        assert not mask.any()
    assert seen[4] is None and seen[5] is None
    cls_scores[-1].sum().backward()
    assert head.learned_memory['scene'].grad.abs().sum() > 0
    assert head.learned_memory['object'].grad.abs().sum() > 0
    with pytest.raises(ValueError, match='aug_cls'):
        MODELS.build(tiny_head_cfg(learned_memory=(5, 9), aug_cls=True))


def build_tiny_maps(root, memory_root, options=None):
    cfg = load_config_with_root(TINY_MAPS, root, dict({'memory.root': memory_root},
                                                      **(options or {})))
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    hook = HOOKS.build(dict(type='MemoryHook'))
    hook.before_run(SimpleNamespace(cfg=cfg, model=model, logger=logging.getLogger('maps'),
                                    seed=0))
    return model, cfg


# ------------------------------------------------------------------ independent references
def sha256_of(path):
    """The content identity of an image file, computed here."""
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def bank_files(memory_root):
    """The scene bank and query cache of a memory directory, read straight from its files."""
    scene, cache = osp.join(memory_root, 'scene'), osp.join(memory_root, 'query_cache')
    with open(osp.join(scene, 'manifest.json')) as f:
        manifest = json.load(f)
    return dict(keys=np.load(osp.join(scene, 'keys.npy')).astype(np.float32),
                image_ids=np.load(osp.join(scene, 'image_ids.npy')),
                identities=[i.decode() for i in np.load(osp.join(scene, 'image_sha256.npy'))],
                file_names=manifest['file_names'],
                cache_keys=np.load(osp.join(cache, 'embeddings.npy')),
                cache_ids=np.load(osp.join(cache, 'image_ids.npy')))


def exact_top_k(bank, key, k, exclude=None):
    """(image ids, scores) of the k bank entries nearest to ``key`` by inner product (a
    brute-force search), skipping the entries whose identity is ``exclude``."""
    scores = bank['keys'] @ key.detach().cpu().numpy().astype(np.float32)
    order = [r for r in np.argsort(-scores, kind='stable') if bank['identities'][r] != exclude]
    rows = order[:k]
    return [int(bank['image_ids'][r]) for r in rows], torch.tensor(scores[rows])


def independent_key_encoder(cfg, memory_root):
    """A second instance of the config's key encoder (not the memory's)."""
    encoder = build_memory_encoder(cfg.memory.key_encoder)
    with open(osp.join(memory_root, 'manifest.json')) as f:
        recorded = json.load(f)['encoders']['key']
    assert encoder.describe()['weights_sha256'] == recorded['weights_sha256']  # the banks'
    return encoder


def read_file_rgb(path):
    """An image file as PIL decodes it: RGB (3, H, W) uint8."""
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert('RGB'))).permute(2, 0, 1)


def loader_batch(dataset, indices, seed=0):
    """A collated batch (the augmentations seeded)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return pseudo_collate([dataset[i] for i in indices])


def loader_views_rgb(batch):
    """The images the data pipeline gives the model (before the data preprocessor), RGB."""
    return [image[[2, 1, 0]].clone() for image in batch['inputs']]


def retrieval_of(samples):
    return RetrievalResult.cat([s.metainfo['retrieval'] for s in samples])


def training_retrieval(model, cfg, indices):
    """One training forward of the train images ``indices``: the views the pipeline gave
    the model (RGB), their files, the losses and the batch's retrieval."""
    batch = loader_batch(DATASETS.build(cfg.train_dataloader.dataset), indices)
    model.train()
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode='loss')
    return (loader_views_rgb(batch), [s.img_path for s in batch['data_samples']], losses,
            retrieval_of(data['data_samples']))


def test_maps_detector_trains_and_predicts(synthetic_root, synthetic_memory):
    model, cfg = build_tiny_maps(synthetic_root, synthetic_memory)
    assert not any('query_encoder' in k or 'visual' in k for k in model.state_dict())
    memory = model.memory
    bank = bank_files(synthetic_memory)
    encoder = independent_key_encoder(cfg, synthetic_memory)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batch = loader_batch(dataset, [0, 1])
    views = loader_views_rgb(batch)
    paths = [s.img_path for s in batch['data_samples']]
    own = [sha256_of(p) for p in paths]
    assert all(o in bank['identities'] for o in own)  # the training pictures are in the memory

    model.train()
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode='loss')
    result = retrieval_of(data['data_samples'])
    # the keys are the key encoder on the augmented views the model sees (the paper's
    # "during the forward pass"), not the query cache of the whole files that holds them
    assert result.keys_from_cache.dtype == torch.bool and not result.keys_from_cache.any()
    from_views = encoder(views)
    from_files = encoder([read_file_rgb(p) for p in paths])
    torch.testing.assert_close(result.query_keys, from_views, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(result.query_keys, from_files, atol=1e-4)
    # training policy: a query never retrieves its own picture; otherwise the exact top-k
    for b in range(len(paths)):
        ids, scores = exact_top_k(bank, from_views[b], memory.k, exclude=own[b])
        assert result.image_ids[b].tolist() == ids
        torch.testing.assert_close(result.scores[b], scores, atol=1e-4, rtol=1e-4)
        assert all(bank['identities'][r] != own[b] for r in result.rows[b].tolist())
    # the retrieval statistics come with the losses and are not summed into the loss
    stats = {k: float(v) for k, v in losses.items() if k.startswith('retrieval/')}
    assert stats['retrieval/key_cache_hits'] == 0.0
    assert stats['retrieval/scene_sim'] == pytest.approx(float(result.scores[:, 0].mean()),
                                                         abs=1e-6)
    total, _ = model.parse_losses(losses)
    torch.testing.assert_close(total, sum(v.mean() for k, v in losses.items()
                                          if not k.startswith('retrieval/')))
    assert torch.isfinite(total)

    # the key encoder is frozen and outside the trained model: an optimizer step of the
    # model changes the memory attention and leaves the encoder (and so the keys) alone
    encoder_params = list(memory.key_encoder.parameters())
    assert encoder_params and not any(p.requires_grad for p in encoder_params)
    assert not {id(p) for p in encoder_params} & {id(p) for p in model.parameters()}
    encoder_state = {k: v.clone() for k, v in memory.key_encoder.state_dict().items()}
    layers = model.panoptic_head.transformer_decoder.layers
    attn_before = layers[0].memory_attn.k_proj.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)
    optimizer.zero_grad()
    total.backward()
    for i in (0, 2):  # a scene and an object layer
        assert layers[i].memory_attn.k_proj.weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(layers[0].memory_attn.k_proj.weight, attn_before)
    assert all(torch.equal(v, encoder_state[k])
               for k, v in memory.key_encoder.state_dict().items())
    torch.testing.assert_close(memory.key_encoder([read_file_rgb(p) for p in paths]),
                               from_files)

    # evaluation policy: nothing excluded, a picture of the memory retrieves itself first;
    # the test pipeline shows whole pictures (only resized): the query cache serves them
    model.eval()
    whole = DATASETS.build(dict(cfg.val_dataloader.dataset,
                                ann_file=cfg.train_dataloader.dataset.ann_file,
                                data_prefix=cfg.train_dataloader.dataset.data_prefix))
    whole_batch = pseudo_collate([whole[i] for i in range(len(whole))
                                  if whole.get_data_info(i)['img_path'] in paths])
    assert [s.img_path for s in whole_batch['data_samples']] == paths
    whole_data = model.data_preprocessor(whole_batch, False)
    with torch.no_grad():
        result = model.retrieve(whole_data['inputs'], whole_data['data_samples'])
    assert result.keys_from_cache.all()
    torch.testing.assert_close(result.query_keys, from_files, atol=1e-6, rtol=1e-5)
    for b in range(len(paths)):
        ids, _ = exact_top_k(bank, from_files[b], memory.k)
        assert result.image_ids[b].tolist() == ids
        assert bank['identities'][int(result.rows[b, 0])] == own[b]
        assert float(result.scores[b, 0]) == pytest.approx(1.0, abs=1e-5)

    # predictions keep the retrieval of their image, without the values; val pictures are
    # in no cache: their keys are the encoder on the image the model sees
    val = DATASETS.build(cfg.val_dataloader.dataset)
    val_batch = pseudo_collate([val[i] for i in range(2)])
    val_views = loader_views_rgb(val_batch)
    assert not any(sha256_of(s.img_path) in bank['identities']
                   for s in val_batch['data_samples'])
    with torch.no_grad():
        results = model.test_step(val_batch)
    assert results[0].pred_panoptic_seg.sem_seg.shape[-2:] == results[0].ori_shape
    for view, sample in zip(val_views, results):
        retrieval = sample.metainfo['retrieval']
        assert retrieval.scene_values.shape == (1, memory.k, 0)
        assert retrieval.object_values.shape[0] == 1 and retrieval.object_values.shape[-1] == 0
        assert not retrieval.keys_from_cache.any()
        key = encoder([view])
        torch.testing.assert_close(retrieval.query_keys, key, atol=1e-5, rtol=1e-4)
        ids, scores = exact_top_k(bank, key[0], memory.k)
        assert retrieval.image_ids[0].tolist() == ids
        torch.testing.assert_close(retrieval.scores[0], scores, atol=1e-4, rtol=1e-4)


def test_maps_without_query_caches_encodes_the_model_input(synthetic_root, synthetic_memory):
    model, cfg = build_tiny_maps(synthetic_root, synthetic_memory)
    memory = build_external_memory(cfg.memory, device='cpu', query_caches=False)
    assert not memory.caches
    model.attach_memory(memory)
    bank = bank_files(synthetic_memory)
    encoder = independent_key_encoder(cfg, synthetic_memory)
    views, paths, losses, result = training_retrieval(model, cfg, [2, 3])
    assert not result.keys_from_cache.any()
    assert float(losses['retrieval/key_cache_hits']) == 0.0
    from_views = encoder(views)
    torch.testing.assert_close(result.query_keys, from_views, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(result.query_keys, encoder([read_file_rgb(p) for p in paths]),
                              atol=1e-4)
    # the leak guard does not depend on the cache: still never the query's own picture
    for b, path in enumerate(paths):
        ids, _ = exact_top_k(bank, from_views[b], memory.k, exclude=sha256_of(path))
        assert result.image_ids[b].tolist() == ids
    # a memory whose values the model cannot read is refused
    with pytest.raises(MemoryBankError, match='does not fit the model'):
        model.panoptic_head.scene_memory_dims = 256
        model.attach_memory(memory)


def test_full_image_cache_option_keys_training_from_the_files(synthetic_root,
                                                              synthetic_memory):
    """memory.retrieval.query_keys='full_image_cache': the named, documented departure;
    training keys (and Aug-CLS) are the cached keys of the whole files."""
    model, cfg = build_tiny_maps(synthetic_root, synthetic_memory,
                                 {'memory.retrieval.query_keys': 'full_image_cache'})
    encoder = independent_key_encoder(cfg, synthetic_memory)
    views, paths, losses, result = training_retrieval(model, cfg, [0, 1])
    assert result.keys_from_cache.all() and float(losses['retrieval/key_cache_hits']) == 1.0
    torch.testing.assert_close(result.query_keys,
                               encoder([read_file_rgb(p) for p in paths]), atol=1e-6,
                               rtol=1e-5)
    assert not torch.allclose(result.query_keys, encoder(views), atol=1e-4)
    with pytest.raises(MemoryBankError, match='query_keys must be one of'):
        build_tiny_maps(synthetic_root, synthetic_memory,
                        {'memory.retrieval.query_keys': 'augmented'})


def test_whole_picture_from_the_pipelines_metainfo():
    """Whether a sample shows its file's whole picture, decided on metainfo that mmdet's own
    transforms produce: resize only (keep ratio or not) yes; a crop, a flip, no."""
    from mmcv.transforms import Compose
    from mmmaps.memory.external_memory import shows_whole_picture
    register_all_modules()
    image = np.random.default_rng(0).integers(0, 255, (50, 100, 3), dtype=np.uint8)

    def meta(*transforms):
        out = Compose([*transforms, dict(type='PackDetInputs', meta_keys=(
            'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip'))])(
            dict(img=image.copy(), img_shape=image.shape[:2], ori_shape=image.shape[:2],
                 img_path='x.jpg', gt_bboxes=np.zeros((0, 4), np.float32),
                 gt_bboxes_labels=np.zeros(0, np.int64)))
        return out['data_samples'].metainfo

    assert shows_whole_picture(meta(dict(type='Resize', scale=(64, 64), keep_ratio=True)))
    assert shows_whole_picture(meta(dict(type='Resize', scale=(333, 77), keep_ratio=False)))
    resize = dict(type='Resize', scale=(128, 128), keep_ratio=True)
    assert shows_whole_picture(meta(resize, dict(type='RandomFlip', prob=0.0)))
    assert not shows_whole_picture(meta(resize, dict(type='RandomFlip', prob=1.0)))
    assert not shows_whole_picture(meta(resize, dict(type='RandomCrop', crop_size=(40, 40),
                                                     allow_negative_crop=True)))
    assert not shows_whole_picture(meta(
        dict(type='Resize', scale=(128, 128), keep_ratio=True),
        dict(type='RandomCrop', crop_size=(64, 128), allow_negative_crop=True)))
    assert shows_whole_picture(meta())  # nothing resized, cropped or flipped it
    assert not shows_whole_picture(meta(dict(type='RandomCrop', crop_size=(40, 40),
                                             allow_negative_crop=True)))  # no resize
    no_scale = meta(resize)
    no_scale.pop('scale_factor')
    assert not shows_whole_picture(no_scale)  # resized, by how much unknown
    no_shape = meta(resize)
    no_shape.pop('ori_shape')
    assert not shows_whole_picture(no_shape)  # cannot be shown


COCO_LIKE_IDS = [632, 3, 1, 139, 4, 2]  # sparse COCO-style ids, among them 1..4


def renumber_train_split(root, new_ids):
    """Give the train images of a synthetic dataset other ids, and the file names that go
    with them, in its panoptic and instance JSONs, images and PNGs."""
    ann_dir = osp.join(root, 'annotations')
    with open(osp.join(ann_dir, 'panoptic_train.json')) as f:
        panoptic = json.load(f)
    with open(osp.join(ann_dir, 'instances_train.json')) as f:
        instances = json.load(f)
    mapping = dict(zip([image['id'] for image in panoptic['images']], new_ids))
    assert len(mapping) == len(new_ids)
    moves = []
    for image in panoptic['images'] + instances['images']:
        old_name, image['file_name'] = image['file_name'], f'{mapping[image["id"]]:012d}.jpg'
        if image in panoptic['images']:
            moves.append((osp.join(root, 'train', old_name),
                          osp.join(root, 'train', image['file_name'])))
        image['id'] = mapping[image['id']]
    for ann in panoptic['annotations']:
        old_name, ann['file_name'] = ann['file_name'], f'{mapping[ann["image_id"]]:012d}.png'
        moves.append((osp.join(ann_dir, 'panoptic_train', old_name),
                      osp.join(ann_dir, 'panoptic_train', ann['file_name'])))
        ann['image_id'] = mapping[ann['image_id']]
    for ann in instances['annotations']:
        ann['image_id'] = mapping[ann['image_id']]
    for src, _ in moves:  # new names may be the old names of other images
        os.rename(src, src + '.renumbering')
    for src, dst in moves:
        os.rename(src + '.renumbering', dst)
    for name, data in (('panoptic_train.json', panoptic), ('instances_train.json', instances)):
        with open(osp.join(ann_dir, name), 'w') as f:
            json.dump(data, f)


def test_coco_id_memory_serves_no_foreign_key_to_a_1_to_n_dataset(tmp_path):
    """A memory of COCO-style ids and a training set numbered 1..N: the ids (and file names)
    collide, the pictures differ. No key may come from the memory's cache and nothing may be
    excluded as 'the query's own picture'."""
    from mmmaps.datasets import generate_synthetic_panoptic
    root_a, root_b = str(tmp_path / 'coco_like') + '/', str(tmp_path / 'one_to_n') + '/'
    generate_synthetic_panoptic(root_a, num_train=6, num_val=1, seed=11, size=(64, 64),
                                progress=False)
    generate_synthetic_panoptic(root_b, num_train=4, num_val=1, seed=12, size=(64, 64),
                                progress=False)
    renumber_train_split(root_a, COCO_LIKE_IDS)
    memory_a = build_tiny_memory(root_a, str(tmp_path / 'memory_a'))
    bank = bank_files(memory_a)
    assert sorted(bank['image_ids'].tolist()) == sorted(COCO_LIKE_IDS)
    assert sorted(bank['cache_ids'].tolist()) == sorted(COCO_LIKE_IDS)

    model, cfg = build_tiny_maps(root_b, memory_a, {'memory.retrieval.k': len(COCO_LIKE_IDS)})
    encoder = independent_key_encoder(cfg, memory_a)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batch = loader_batch(dataset, range(len(dataset)))
    views = loader_views_rgb(batch)
    samples = batch['data_samples']
    paths = [s.img_path for s in samples]
    ids = [s.img_id for s in samples]
    # premises: B's ids and file names are A's, its pictures are not
    assert sorted(ids) == [1, 2, 3, 4]
    assert {osp.basename(p) for p in paths} <= set(bank['file_names'])
    assert not {sha256_of(p) for p in paths} & set(bank['identities'])
    # positive control: the memory's cache does serve A's own pictures, by content
    a_file = osp.join(root_a, 'train', f'{COCO_LIKE_IDS[0]:012d}.jpg')
    _, found = model.memory.query_keys([read_file_rgb(a_file)],
                                       [model.memory.identity_of(a_file)])
    assert found.tolist() == [True]
    _, found = model.memory.query_keys(views, [model.memory.identity_of(p) for p in paths])
    assert not found.any()

    model.train()
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode='loss')
    assert torch.isfinite(model.parse_losses(losses)[0])
    result = retrieval_of(data['data_samples'])
    assert not result.keys_from_cache.any()
    assert float(losses['retrieval/key_cache_hits']) == 0.0
    from_views = encoder(views)
    torch.testing.assert_close(result.query_keys, from_views, atol=1e-5, rtol=1e-4)
    for b, image_id in enumerate(ids):
        # not A's cached key of the image with the same id
        foreign = torch.from_numpy(bank['cache_keys'][bank['cache_ids'] == image_id][0])
        assert not torch.allclose(result.query_keys[b], foreign, atol=1e-3)
        # nothing excluded: all of A's images, in exact order, the namesake included
        expected, _ = exact_top_k(bank, from_views[b], len(COCO_LIKE_IDS))
        assert result.image_ids[b].tolist() == expected and image_id in expected


def test_maps_without_memory_hook_says_so(synthetic_root):
    cfg = load_config_with_root(TINY_MAPS, synthetic_root)
    register_all_modules()
    model = MODELS.build(cfg.model)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    data = model.data_preprocessor(pseudo_collate([dataset[0]]), True)
    with pytest.raises(RuntimeError, match='MemoryHook'):
        model(**data, mode='loss')


def test_tiny_maps_trains_and_tests_through_the_tools(synthetic_root, synthetic_memory,
                                                      tmp_path):
    from ..conftest import run_tool
    work = str(tmp_path / 'work')
    loaders = ['train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
               'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
               'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']
    proc = run_tool(['tools/train.py', TINY_MAPS, '--work-dir', work, '--cfg-options',
                     'train_cfg.max_iters=2', 'train_cfg.val_interval=100',
                     'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
                     'train_dataloader.batch_size=2',
                     f'memory.root={synthetic_memory}'] + loaders, synthetic_root)
    log = proc.stdout + proc.stderr
    assert 'object bank' in log and 'query caches by content: query_cache (8)' in log
    # every synthetic training picture is in the memory; training never retrieves it
    assert 'leak guard: 8 of the 8 training images are in the memory' in log
    # the training images' keys come from the key encoder on the augmented inputs, none from
    # the cache that holds their files (statistics logged with the losses)
    assert re.search(r'retrieval/key_cache_hits: 0\.0+\b', log)
    assert not re.search(r'retrieval/key_cache_hits: 1\.', log)
    ckpt = osp.join(work, 'iter_2.pth')
    meta = safe_torch_load(ckpt, map_location='cpu')['meta']
    assert meta['memory']['root'] == synthetic_memory
    proc = run_tool(['tools/test.py', TINY_MAPS, ckpt, '--work-dir', work, '--cfg-options',
                     f'memory.root={synthetic_memory}'] + loaders, synthetic_root)
    assert 'coco_panoptic/PQ' in open(osp.join(work, 'metrics.json')).read()
    # the val pictures are in no cache: their keys are encoded (evaluation statistics)
    log = proc.stdout + proc.stderr
    assert re.search(r'retrieval \(test\) from .*retrieval/key_cache_hits=0\.0+\b', log)
