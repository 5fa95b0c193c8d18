"""MAPS: memory cross-attention, the memory head, the detector and its augmentations."""
import copy
import logging
import math
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

from mmdet.registry import DATASETS, HOOKS, MODELS
from mmdet.utils import register_all_modules

from mmmaps.models import MemoryCrossAttention
from mmmaps.models.dense_heads import MemoryInputs
from mmmaps.utils.checkpoint_loading import safe_torch_load

from ..conftest import REPO_ROOT, TINY_M2F, load_config_with_root

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
    samples = [SimpleNamespace(metainfo=dict(batch_input_shape=(128, 128), img_shape=(128, 128)))
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
        expected = baseline(feats, samples)
        with maps.memory(None):
            got = maps(feats, samples)
        assert all(torch.equal(a, b) for a, b in zip(expected[0] + expected[1], got[0] + got[1]))
        maps.use_scene_memory = maps.use_object_memory = False  # Table 7 row 1
        with maps.memory(random_memory()):
            got = maps(feats, samples)
        assert all(torch.equal(a, b) for a, b in zip(expected[0] + expected[1], got[0] + got[1]))
        maps.use_scene_memory = maps.use_object_memory = True
        with maps.memory(random_memory()):
            changed = maps(feats, samples)
        assert not torch.allclose(expected[0][-1], changed[0][-1])



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


def build_tiny_maps(root, memory_root):
    cfg = load_config_with_root(TINY_MAPS, root, {'memory.root': memory_root})
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    hook = HOOKS.build(dict(type='MemoryHook'))
    hook.before_run(SimpleNamespace(cfg=cfg, model=model, logger=logging.getLogger('maps')))
    return model, cfg


def test_maps_detector_trains_and_predicts(synthetic_root, synthetic_memory):
    model, cfg = build_tiny_maps(synthetic_root, synthetic_memory)
    assert not any('query_encoder' in k or 'visual' in k for k in model.state_dict())
    assert model.retriever.exclude_self
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    batch = pseudo_collate([dataset[i] for i in range(2)])
    model.train()
    data = model.data_preprocessor(batch, True)
    # the cache holds the training images: the encoder is not needed
    cached = model.query_keys(data['inputs'], data['data_samples'])
    encoded = model.query_encoder(model._raw_images(data['inputs'], data['data_samples']))
    assert cached.shape == encoded.shape
    losses = model(**data, mode='loss')
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    layers = model.panoptic_head.transformer_decoder.layers
    for i in (0, 2):  # a scene and an object layer
        assert layers[i].memory_attn.k_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.query_encoder.parameters())
    assert all(layer._memory is None for layer in layers), 'memory must not outlive a forward'
    model.eval()
    val = DATASETS.build(cfg.val_dataloader.dataset)
    with torch.no_grad():
        results = model.test_step(pseudo_collate([val[i] for i in range(2)]))
    assert results[0].pred_panoptic_seg.sem_seg.shape[-2:] == results[0].ori_shape


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
                     'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=2',
                     f'memory.root={synthetic_memory}'] + loaders, synthetic_root)
    log = proc.stdout + proc.stderr
    assert 'leak guard (exclude the query image) on' in log and 'object bank' in log
    ckpt = osp.join(work, 'iter_2.pth')
    meta = safe_torch_load(ckpt, map_location='cpu')['meta']
    assert meta['memory']['root'] == synthetic_memory
    proc = run_tool(['tools/test.py', TINY_MAPS, ckpt, '--work-dir', work, '--cfg-options',
                     f'memory.root={synthetic_memory}'] + loaders, synthetic_root)
    assert 'coco_panoptic/PQ' in open(osp.join(work, 'metrics.json')).read()
