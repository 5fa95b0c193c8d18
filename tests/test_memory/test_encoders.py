"""Frozen memory encoders: geometry, tiling, MaskCLIP, normalisation, weights and determinism.

Everything runs on small random-init towers (open_clip ViT-S-16, timm DINO ViT-S/16).
"""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F

from mmmaps.memory.encoders import (BaseMemoryEncoder, CLIPCLSEncoder, CLIPImageDenseEncoder,
                                    DINOCLSEncoder, DINODenseEncoder, MaskCLIPDenseEncoder,
                                    TiledCLIPDenseEncoder, build_memory_encoder)
from mmmaps.memory.encoders import weights as enc_weights
from tests.conftest import REPO_ROOT

CLIP_ARCH = 'ViT-S-16'
DINO_ARCH = 'vit_small_patch16_224.dino'
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]) * 255
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]) * 255
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]) * 255

CONFIGS = {
    'CLIPCLSEncoder': dict(type='CLIPCLSEncoder', arch=CLIP_ARCH),
    'CLIPImageDenseEncoder': dict(type='CLIPImageDenseEncoder', arch=CLIP_ARCH),
    'TiledCLIPDenseEncoder': dict(type='TiledCLIPDenseEncoder', arch=CLIP_ARCH, short_side=224),
    'MaskCLIPDenseEncoder': dict(type='MaskCLIPDenseEncoder', arch=CLIP_ARCH, short_side=224),
    'DINOCLSEncoder': dict(type='DINOCLSEncoder', arch=DINO_ARCH),
    'DINODenseEncoder': dict(type='DINODenseEncoder', arch=DINO_ARCH),
}


def random_image(height, width, seed=0, dtype=torch.uint8):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8)
    return image if dtype == torch.uint8 else image.to(dtype)


def clip_final_tokens(visual, x):
    """Reference: projected patch tokens (B, gh, gw, E) straight from open_clip's own API."""
    out = visual.forward_intermediates(x, indices=[len(visual.transformer.resblocks) - 1],
                                       normalize_intermediates=True, intermediates_only=True,
                                       output_fmt='NCHW')['image_intermediates'][0]
    return out.permute(0, 2, 3, 1) @ visual.proj


def clip_normalize(image):
    return (image.float() - CLIP_MEAN.view(3, 1, 1)) / CLIP_STD.view(3, 1, 1)


@pytest.fixture(scope='module')
def encoders():
    return {name: build_memory_encoder(cfg) for name, cfg in CONFIGS.items()}


@pytest.fixture(scope='module')
def tiled448(encoders):
    return TiledCLIPDenseEncoder(arch=CLIP_ARCH, short_side=448, tile_batch_size=4)


# ------------------------------------------------------------------------ API, shapes
@pytest.mark.parametrize('name', list(CONFIGS))
def test_shapes_norms_and_ragged_lists(encoders, name):
    enc = encoders[name]
    assert isinstance(enc, BaseMemoryEncoder) and type(enc).__name__ == name
    assert enc.out_channels == 384
    images = [random_image(120, 160, seed=1), random_image(97, 61, seed=2)]
    out = enc(images)
    if enc.kind == 'global':
        assert out.shape == (2, 384) and out.dtype == torch.float32
        assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
        singles = torch.cat([enc([image]) for image in images])
    else:
        assert enc.kind == 'dense' and isinstance(out, list) and len(out) == 2
        for image, feature_map in zip(images, out):
            assert feature_map.dtype == torch.float32
            assert feature_map.shape == (384, *enc.output_size(*image.shape[-2:]))
            assert torch.allclose(feature_map.norm(dim=0), torch.ones(()), atol=1e-5)
        singles = [enc([image])[0] for image in images]
    # a batch of differently sized images gives what each image gives on its own
    for batched, single in zip(out, singles):
        assert torch.allclose(batched, single, atol=1e-5)
    # a (B, 3, H, W) tensor works like a list
    stacked = torch.stack([random_image(64, 80, seed=3), random_image(64, 80, seed=4)])
    as_tensor, as_list = enc(stacked), enc(list(stacked))
    for a, b in zip(as_tensor, as_list):
        assert torch.equal(a, b)
    empty = enc([])
    assert (empty.shape == (0, 384)) if enc.kind == 'global' else empty == []


@pytest.mark.parametrize('name', list(CONFIGS))
def test_uint8_and_float_inputs_agree(encoders, name):
    enc = encoders[name]
    image = random_image(90, 130, seed=5)
    for a, b in zip(enc([image]), enc([image.float()])):
        assert torch.equal(a, b)


@pytest.mark.parametrize('name', list(CONFIGS))
def test_frozen_and_always_eval(encoders, name):
    enc = encoders[name]
    assert all(not p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    with torch.enable_grad():
        out = enc([random_image(32, 32)])
    assert all(not t.requires_grad for t in (out if isinstance(out, list) else [out]))


def test_dense_output_sizes(encoders):
    assert encoders['CLIPImageDenseEncoder'].output_size(480, 640) == (14, 14)
    assert encoders['DINODenseEncoder'].output_size(480, 640) == (14, 14)
    # short side 224, long side 224 * 640 / 480 = 298.7 -> 304 (multiple of 16)
    assert encoders['MaskCLIPDenseEncoder'].output_size(480, 640) == (14, 19)
    assert encoders['TiledCLIPDenseEncoder'].output_size(480, 640) == (14, 19)
    # MaskCLIP has no minimum size, the tiled encoder pads up to one tile
    assert encoders['MaskCLIPDenseEncoder'].output_size(100, 1000) == (14, 140)
    tiled = TiledCLIPDenseEncoder(arch=CLIP_ARCH, short_side=160)
    assert tiled.output_size(100, 1000) == (14, 100)


def test_describe_is_json_and_complete(encoders):
    for name, enc in encoders.items():
        info = json.loads(json.dumps(enc.describe()))
        assert info['type'] == name and info['out_channels'] == 384 and info['seed'] == 0
        assert info['checkpoint'] is None and info['checkpoint_sha256'] is None
        assert len(info['weights_sha256']) == 64
        assert info['arch'] == (CLIP_ARCH if 'CLIP' in name else DINO_ARCH)
    assert encoders['TiledCLIPDenseEncoder'].describe()['short_side'] == 224
    assert encoders['TiledCLIPDenseEncoder'].describe()['tile_size'] == 224
    assert encoders['CLIPCLSEncoder'].describe()['image_size'] == 224


def test_build_rejects_non_encoders():
    with pytest.raises(TypeError, match='not a BaseMemoryEncoder'):
        build_memory_encoder(dict(type='BaseDataPreprocessor'))


# ------------------------------------------------------------------------ normalisation
def test_each_encoder_uses_its_own_mean_and_std(encoders):
    clip = encoders['CLIPCLSEncoder']
    const = CLIP_MEAN.view(3, 1, 1).expand(3, 300, 200).clone()
    assert torch.allclose(clip.preprocess(const), torch.zeros(3, 224, 224), atol=1e-4)
    assert torch.allclose(clip.std.flatten(), CLIP_STD)
    dino = encoders['DINOCLSEncoder']
    const = IMAGENET_MEAN.view(3, 1, 1).expand(3, 300, 200).clone()
    assert torch.allclose(dino.preprocess(const), torch.zeros(3, 224, 224), atol=1e-4)
    assert not torch.allclose(clip.preprocess(const), torch.zeros(3, 224, 224), atol=1e-2)
    for name in ('TiledCLIPDenseEncoder', 'MaskCLIPDenseEncoder', 'CLIPImageDenseEncoder'):
        assert torch.equal(encoders[name].mean, clip.mean)
    assert torch.equal(encoders['DINODenseEncoder'].mean, dino.mean)


# ------------------------------------------------------------------------ correctness
def test_clip_cls_matches_open_clip(encoders):
    enc = encoders['CLIPCLSEncoder']
    image = random_image(224, 224, seed=6)
    expected = F.normalize(enc.visual(clip_normalize(image)[None]), dim=-1)
    assert torch.allclose(enc([image]), expected, atol=1e-5)


def test_clip_image_dense_matches_open_clip_tokens(encoders):
    enc = encoders['CLIPImageDenseEncoder']
    image = random_image(224, 224, seed=7)
    with torch.no_grad():
        expected = clip_final_tokens(enc.visual, clip_normalize(image)[None])[0]
    expected = F.normalize(expected.permute(2, 0, 1), dim=0)
    assert torch.allclose(enc([image])[0], expected, atol=1e-5)


def test_dino_matches_timm_forward(encoders):
    enc_cls, enc_dense = encoders['DINOCLSEncoder'], encoders['DINODenseEncoder']
    image = random_image(224, 224, seed=8)
    x = ((image.float() - IMAGENET_MEAN.view(3, 1, 1)) /
         (torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255))[None]
    with torch.no_grad():
        feats = enc_cls.vit.forward_features(x)
    assert torch.allclose(enc_cls([image]), F.normalize(feats[:, 0], dim=-1), atol=1e-5)
    patches = feats[0, 1:].reshape(14, 14, -1).permute(2, 0, 1)
    assert torch.allclose(enc_dense([image])[0], F.normalize(patches, dim=0), atol=1e-5)


def test_tiled_equals_independent_tiles_on_exact_multiple(tiled448):
    # 448x672 with short_side 448 needs no resize and splits into 2x3 tiles of 224
    image = random_image(448, 672, seed=9)
    out = tiled448([image])[0]
    assert out.shape == (384, 28, 42) == (384, *tiled448.output_size(448, 672))
    x = clip_normalize(image)
    tiles = torch.stack([x[:, 224 * r:224 * (r + 1), 224 * c:224 * (c + 1)]
                         for r in range(2) for c in range(3)])
    with torch.no_grad():
        tokens = clip_final_tokens(tiled448.visual, tiles)  # (6, 14, 14, E)
    expected = torch.zeros(28, 42, 384)
    for k, (r, c) in enumerate([(r, c) for r in range(2) for c in range(3)]):
        expected[14 * r:14 * (r + 1), 14 * c:14 * (c + 1)] = tokens[k]
    expected = F.normalize(expected.permute(2, 0, 1), dim=0)
    assert torch.allclose(out, expected, atol=1e-5)


def test_tiled_border_tile_writes_only_uncovered_cells(encoders):
    enc = encoders['TiledCLIPDenseEncoder']
    # 224x352 needs no resize: a tile at x=0 and a border tile at x=128 that writes
    # its last 8 token columns (cells 14..21 of the full grid)
    image = random_image(224, 352, seed=10)
    out = enc([image])[0]
    assert out.shape == (384, 14, 22)
    x = clip_normalize(image)
    with torch.no_grad():
        tokens = clip_final_tokens(enc.visual, torch.stack([x[:, :, :224], x[:, :, 128:]]))
    expected = torch.cat([tokens[0], tokens[1][:, 6:]], dim=1)
    assert torch.allclose(out, F.normalize(expected.permute(2, 0, 1), dim=0), atol=1e-5)


@pytest.mark.parametrize('size', [(450, 700), (300, 301), (100, 1000), (448, 672), (1000, 37),
                                  (224, 224), (17, 9)])
def test_tiled_layout_covers_every_cell_once(tiled448, size):
    height, width = tiled448.resized_size(*size)
    assert height % 16 == 0 and width % 16 == 0 and min(height, width) >= 224
    assert tiled448.output_size(*size) == (height // 16, width // 16)
    count = np.zeros((height // 16, width // 16), dtype=int)
    for tile in tiled448._tile_layout(height, width):
        assert 0 <= tile.y0 <= height - 224 and 0 <= tile.x0 <= width - 224
        r0, r1, c0, c1 = tile.src
        d0, d1, e0, e1 = tile.dst
        assert (d0, d1, e0, e1) == (tile.y0 // 16 + r0, tile.y0 // 16 + r1,
                                    tile.x0 // 16 + c0, tile.x0 // 16 + c1)
        count[d0:d1, e0:e1] += 1
    assert (count == 1).all()


def test_tiled_resized_sizes(tiled448):
    assert tiled448.resized_size(450, 700) == (448, 704)  # 696.9 -> 704
    assert tiled448.resized_size(300, 301) == (448, 448)  # 449.5 -> 448
    assert tiled448.resized_size(100, 1000) == (448, 4480)
    assert tiled448.resized_size(480, 640) == (448, 592)  # 597.3 -> 592
    assert len(tiled448._tile_layout(448, 704)) == 2 * 4


@pytest.mark.parametrize('size', [(450, 700), (300, 301)])
def test_tiled_output_shape_on_other_sizes(tiled448, size):
    out = tiled448([random_image(*size, seed=11)])[0]
    assert out.shape == (384, *tiled448.output_size(*size))
    assert torch.allclose(out.norm(dim=0), torch.ones(()), atol=1e-5)


def test_maskclip_last_block_matches_hand_written_reference(encoders):
    enc = encoders['MaskCLIPDenseEncoder']
    visual = enc.visual
    image = random_image(224, 224, seed=12)  # short_side 224: no resize, no pos-embed resample
    num_blocks = len(visual.transformer.resblocks)
    with torch.no_grad():
        inter = visual.forward_intermediates(
            clip_normalize(image)[None], indices=[num_blocks - 2], intermediates_only=True,
            output_fmt='NLC', output_extra_tokens=True)
        x = torch.cat([inter['image_intermediates_prefix'][0], inter['image_intermediates'][0]], 1)
        block = visual.transformer.resblocks[-1]
        dim = x.shape[-1]
        y = F.layer_norm(x, (dim,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
        w_v = block.attn.in_proj_weight[2 * dim:3 * dim]
        b_v = block.attn.in_proj_bias[2 * dim:3 * dim]
        v = y @ w_v.T + b_v
        o = v @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
        z = F.layer_norm(o, (dim,), visual.ln_post.weight, visual.ln_post.bias, visual.ln_post.eps)
        expected = (z @ visual.proj)[0, 1:].reshape(14, 14, -1).permute(2, 0, 1)
    out = enc([image])[0]
    assert torch.allclose(out, F.normalize(expected, dim=0), atol=1e-5)
    # and it is not simply the ordinary forward
    ordinary = CLIPImageDenseEncoder(arch=CLIP_ARCH)([image])[0]
    assert not torch.allclose(out, ordinary, atol=1e-2)


def test_maskclip_resamples_positional_embedding(encoders):
    enc = encoders['MaskCLIPDenseEncoder']
    out = enc([random_image(150, 250, seed=13)])[0]
    assert out.shape == (384, 14, 23) == (384, *enc.output_size(150, 250))  # 373.3 -> 368


# ------------------------------------------------------------------------ weights
def test_towers_are_shared_per_spec(encoders):
    assert encoders['CLIPCLSEncoder'].visual is encoders['TiledCLIPDenseEncoder'].visual
    assert encoders['DINOCLSEncoder'].vit is encoders['DINODenseEncoder'].vit
    other = CLIPCLSEncoder(arch=CLIP_ARCH, seed=1)
    assert other.visual is not encoders['CLIPCLSEncoder'].visual


def test_seeded_init_is_deterministic_and_leaves_global_rng_alone(encoders):
    reference = encoders['CLIPCLSEncoder']
    enc_weights.clear_tower_cache()
    rng_before = torch.get_rng_state()
    rebuilt = CLIPCLSEncoder(arch=CLIP_ARCH, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert rebuilt.visual is not reference.visual  # really rebuilt, not the cached tower
    for (k, a), (_, b) in zip(reference.visual.state_dict().items(),
                              rebuilt.visual.state_dict().items()):
        assert torch.equal(a, b), k
    assert rebuilt.describe()['weights_sha256'] == reference.describe()['weights_sha256']
    image = random_image(64, 64, seed=14)
    assert torch.equal(rebuilt([image]), reference([image]))
    other_seed = CLIPCLSEncoder(arch=CLIP_ARCH, seed=1)
    assert other_seed.describe()['weights_sha256'] != reference.describe()['weights_sha256']
    dino_other = DINOCLSEncoder(arch=DINO_ARCH, seed=1)
    assert (dino_other.describe()['weights_sha256'] !=
            encoders['DINOCLSEncoder'].describe()['weights_sha256'])


def test_seeded_init_agrees_across_processes(encoders):
    code = ('from mmmaps.memory.encoders import CLIPCLSEncoder\n'
            f'print(CLIPCLSEncoder(arch={CLIP_ARCH!r}, seed=0).describe()["weights_sha256"])\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')])))
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == encoders['CLIPCLSEncoder'].describe()['weights_sha256']


def test_fingerprint_tracks_weight_changes():
    with enc_weights.seeded_init(0):
        model = timm.create_model('vit_small_patch16_224', pretrained=False)
    first = enc_weights.weights_fingerprint(model)
    assert enc_weights.weights_fingerprint(model) == first
    with torch.no_grad():
        model.blocks[3].mlp.fc1.weight[0, 0] += 1.0  # a sampled position (stride start)
    assert enc_weights.weights_fingerprint(model) != first


@pytest.mark.parametrize('cls', [CLIPCLSEncoder, TiledCLIPDenseEncoder, DINOCLSEncoder])
def test_missing_checkpoint_says_where_and_how(cls):
    with pytest.raises(FileNotFoundError) as err:
        cls(pretrained='/nonexistent/x.bin')
    message = str(err.value)
    assert '/nonexistent/x.bin' in message and '`pretrained`' in message
    assert ('vit_base_patch16_clip_224.openai' in message if 'CLIP' in cls.__name__
            else 'dino_vitbase16_pretrain.pth' in message)


def _sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_clip_local_checkpoint_round_trip(tmp_path, encoders):
    with enc_weights.seeded_init(123):
        model = open_clip.create_model(CLIP_ARCH)
    path = tmp_path / 'clip_vits16.bin'
    torch.save(model.state_dict(), path)
    enc = TiledCLIPDenseEncoder(arch=CLIP_ARCH, pretrained=str(path), short_side=224)
    for (k, a), (_, b) in zip(model.visual.state_dict().items(),
                              enc.visual.state_dict().items()):
        assert torch.equal(a, b), k
    info = enc.describe()
    assert info['checkpoint'] == str(path) and os.path.isabs(info['checkpoint'])
    assert info['checkpoint_sha256'] == _sha256(path)
    assert info['weights_sha256'] == enc_weights.weights_fingerprint(model.visual)
    assert info['weights_sha256'] != encoders['TiledCLIPDenseEncoder'].describe()['weights_sha256']
    # the seed is irrelevant once a file is loaded, so the tower is shared across seeds
    assert CLIPCLSEncoder(arch=CLIP_ARCH, pretrained=str(path), seed=5).visual is enc.visual


def test_dino_local_checkpoint_round_trip(tmp_path):
    with enc_weights.seeded_init(321):
        model = timm.create_model(DINO_ARCH, pretrained=False)
    path = tmp_path / 'dino_vits16.pth'
    torch.save(model.state_dict(), path)
    enc = DINODenseEncoder(arch=DINO_ARCH, pretrained=str(path))
    for (k, a), (_, b) in zip(model.state_dict().items(), enc.vit.state_dict().items()):
        assert torch.equal(a, b), k
    info = enc.describe()
    assert info['checkpoint'] == str(path) and info['checkpoint_sha256'] == _sha256(path)
