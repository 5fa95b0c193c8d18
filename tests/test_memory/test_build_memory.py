"""tools/build_memory.py and MemoryBuilder on the synthetic dataset (random-init ViT-S/16)."""
import hashlib
import json
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as _  # noqa: F401  (keeps pycocotools import cost out of timings)

from mmmaps.memory import MemoryBank, MemoryRoot
from mmmaps.memory.builder import MemoryBuildError, MemoryBuilder, parse_shard

from ..conftest import MEMORY_CFG, REPO_ROOT, load_config_with_root, run_tool

OPTIONS = {'memory.build.chunk_size': 3, 'memory.build.num_workers': 0}
BANK_ARRAYS = ('keys.npy', 'values.bin', 'offsets.npy', 'image_ids.npy', 'image_sha256.npy')


def make_builder(root, out, **kwargs):
    cfg = load_config_with_root(MEMORY_CFG, root, OPTIONS)
    return MemoryBuilder(cfg, out=str(out), device='cpu', **kwargs)


def bank_digest(path):
    """Every array of a bank (not its build time / index bytes)."""
    manifest = json.load(open(osp.join(path, 'manifest.json')))
    return {name: info['sha256'] for name, info in manifest['files'].items()
            if name != 'index.faiss'}


def file_sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def train_images(root):
    """{image id: path of the image file} of the synthetic train split, from the json."""
    panoptic = json.load(open(osp.join(root, 'annotations', 'panoptic_train.json')))
    return {i['id']: osp.join(root, 'train', i['file_name']) for i in panoptic['images']}


def read_rgb(path):
    """(H, W, 3) uint8 RGB, decoded by PIL (the builder decodes with mmcv)."""
    return np.asarray(Image.open(path).convert('RGB'))


def read_segment_ids(path):
    """COCO panoptic PNG -> (H, W) ids, id = R + 256 G + 256^2 B."""
    rgb = np.asarray(Image.open(path).convert('RGB')).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


@torch.no_grad()
def open_clip_features(visual, rgb):
    """CLS embedding (E,) and projected patch features (E, h, w), both L2-normalised, of a
    square image through open_clip's own forward, preprocessed here by hand: bicubic
    antialiased resize to the tower's native size in float (open_clip's evaluation
    geometry: short side to the native size, then a centre crop, which is the whole
    resized square), OpenAI CLIP mean/std."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    assert rgb.shape[0] == rgb.shape[1], 'the hand preprocessing assumes square images'
    x = torch.tensor(rgb, dtype=torch.float32).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=tuple(visual.image_size), mode='bicubic', antialias=True,
                      align_corners=False).clamp(0, 255)
    x = (x / 255 - torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        OPENAI_DATASET_STD).view(1, 3, 1, 1)
    out = visual.forward_intermediates(x, indices=1, normalize_intermediates=True)
    key = F.normalize(out['image_features'][0], dim=0)
    patches = out['image_intermediates'][-1][0]  # (width, h, w) after ln_post
    dense = F.normalize(torch.einsum('chw,ce->ehw', patches, visual.proj), dim=0)
    return key.numpy(), dense.numpy()


def cell_coverage(mask, height, width):
    """Fraction of each cell of a height x width grid covered by ``mask`` (H, W); cell (i, j)
    spans rows floor(i H / height) .. ceil((i + 1) H / height) and likewise columns
    (adaptive average pooling windows, which overlap when the sizes do not divide)."""
    rows, cols = mask.shape
    out = np.zeros((height, width))
    for i in range(height):
        r0, r1 = (i * rows) // height, -(-((i + 1) * rows) // height)
        for j in range(width):
            c0, c1 = (j * cols) // width, -(-((j + 1) * cols) // width)
            out[i, j] = mask[r0:r1, c0:c1].mean()
    return out


def test_memory_contents(synthetic_root, synthetic_memory):
    memory = MemoryRoot(synthetic_memory)
    panoptic = json.load(open(osp.join(synthetic_root, 'annotations', 'panoptic_train.json')))
    num_images = len(panoptic['images'])
    scene, objects = memory.scene_bank, memory.object_bank
    assert scene.num_entries == objects.num_entries == num_images == len(memory.query_cache)
    np.testing.assert_allclose(np.linalg.norm(scene.keys, axis=1), 1, atol=1e-5)
    assert scene.key_dim == scene.value_dim == memory.key_encoder['out_channels']
    # one object per ground-truth segment, in annotation order, labels contiguous
    cat2label = {c['id']: i for i, c in enumerate(panoptic['categories'])}
    by_id = {a['image_id']: a for a in panoptic['annotations']}
    for row, image_id in enumerate(objects.image_ids):
        segments = by_id[int(image_id)]['segments_info']
        sl = objects.value_slice(row)
        assert sl.stop - sl.start == len(segments)
        assert objects.extras['category_ids'][sl].tolist() == [
            cat2label[s['category_id']] for s in segments]
        assert objects.extras['areas'][sl].tolist() == [s['area'] for s in segments]
    assert objects.manifest['value_encoder']['type'] == 'TiledCLIPDenseEncoder'
    assert memory.source['ann_file'].endswith('panoptic_train.json')
    assert set(memory.scene_bank.file_names) == {i['file_name'] for i in panoptic['images']}
    # content identities: the sha256 of each image file's bytes, in both banks and the cache
    digests = {i: file_sha256(p).encode() for i, p in train_images(synthetic_root).items()}
    assert len(set(digests.values())) == num_images
    cache = memory.query_cache
    assert sorted(cache.image_ids.tolist()) == sorted(digests)
    for holder in (scene, objects, cache):
        assert holder.identities.tolist() == [digests[int(i)] for i in holder.image_ids]
    # the plan records one sha256 over the identities in build order
    plan = memory.manifest['plan']
    assert plan['images_sha256'] == hashlib.sha256(
        b''.join(digests[i] for i in plan['image_ids'])).hexdigest()


def test_cached_query_keys_encode_the_image_files(synthetic_root, synthetic_memory):
    from mmmaps.memory import build_memory_encoder
    memory = MemoryRoot(synthetic_memory)
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root)
    encoder = build_memory_encoder(cfg.memory.key_encoder)
    assert encoder.describe() == memory.key_encoder
    cache, scene = memory.query_cache, memory.scene_bank
    references = []
    for image_id, path in train_images(synthetic_root).items():
        rgb = read_rgb(path)
        reference = open_clip_features(encoder.visual, rgb)[0]
        references.append(reference)
        keys, found = cache.lookup([file_sha256(path)])
        assert found == [True]
        np.testing.assert_allclose(keys[0].numpy(), reference, atol=1e-5)
        # the scene bank row of the image: the same key, and the key as its value (float16)
        row = scene.row_of_image_id(image_id)
        np.testing.assert_allclose(scene.keys[row], reference, atol=1e-5)
        np.testing.assert_allclose(np.asarray(scene.values_of(row)[0], np.float32), reference,
                                   rtol=2 ** -10, atol=1e-6)
    # the encoder on one image alone (the builder encodes batches of mmcv-decoded images)
    np.testing.assert_allclose(
        encoder([torch.from_numpy(read_rgb(path).transpose(2, 0, 1).copy())])[0].numpy(),
        reference, atol=1e-5)
    # the images' keys differ by far more than the tolerance (a swap would be caught)
    references = np.stack(references)
    gaps = np.abs(references[:, None] - references[None]).max(-1)
    assert gaps[~np.eye(len(references), dtype=bool)].min() > 1e-2


def test_object_values_are_mask_averaged_dense_features(synthetic_root, synthetic_memory):
    from mmmaps.memory import build_memory_encoder
    memory = MemoryRoot(synthetic_memory)
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root)
    encoder = build_memory_encoder(cfg.memory.dense_encoder)
    assert encoder.describe() == memory.dense_encoder
    # one tile covers each resized image, so the tiled feature map is one plain forward
    native = tuple(encoder.visual.image_size)
    assert (cfg.memory.dense_encoder.short_side, ) * 2 == native
    assert (cfg.memory.dense_encoder.tile_size, ) * 2 == native
    objects = memory.object_bank
    assert objects.values.dtype == np.float16
    images = train_images(synthetic_root)
    panoptic = json.load(open(osp.join(synthetic_root, 'annotations', 'panoptic_train.json')))
    for n, ann in enumerate(panoptic['annotations']):
        rgb = read_rgb(images[ann['image_id']])
        features = open_clip_features(encoder.visual, rgb)[1]
        segment_ids = read_segment_ids(
            osp.join(synthetic_root, 'annotations', 'panoptic_train', ann['file_name']))
        assert segment_ids.shape == rgb.shape[:2]
        expected = []
        for segment in ann['segments_info']:
            weights = cell_coverage(segment_ids == segment['id'], *features.shape[1:])
            assert weights.sum() > 0
            pooled = (features * weights).sum((1, 2)) / weights.sum()
            expected.append(pooled / np.linalg.norm(pooled))
        stored = np.asarray(objects.values_of(objects.row_of_image_id(ann['image_id'])),
                            np.float32)
        # float16 storage: relative rounding <= 2^-11
        np.testing.assert_allclose(stored, np.stack(expected), rtol=2 ** -10, atol=1e-6)
        if n == 0:  # the encoder alone on this image gives the same feature map
            dense = encoder([torch.from_numpy(rgb.transpose(2, 0, 1).copy())])[0]
            np.testing.assert_allclose(dense.numpy(), features, atol=1e-5)


def test_changed_image_bytes_change_the_plan(synthetic_root, tmp_path):
    root = str(tmp_path / 'data') + '/'
    shutil.copytree(synthetic_root, root)
    out = tmp_path / 'memory'
    first = make_builder(root, out)
    first.prepare(resume=False, force=False)
    path = train_images(root)[2]
    before = file_sha256(path)
    Image.open(path).convert('RGB').save(path, quality=40)  # same picture, other bytes
    assert file_sha256(path) != before
    again = make_builder(root, out)
    digests = {i: file_sha256(p).encode() for i, p in train_images(root).items()}
    assert again.plan['images_sha256'] == hashlib.sha256(
        b''.join(digests[i] for i in again.plan['image_ids'])).hexdigest()
    assert again.plan['images_sha256'] != first.plan['images_sha256']
    with pytest.raises(MemoryBuildError, match='images_sha256'):
        again.prepare(resume=True, force=False)


def test_killed_then_resumed_build_is_identical(synthetic_root, synthetic_memory, tmp_path):
    out = tmp_path / 'resumed'
    first = make_builder(synthetic_root, out)
    first.prepare(resume=False, force=False)
    first.encode_chunks(progress=False, max_chunks=1)  # "killed" after one chunk
    assert not osp.exists(out) and len(first.done_chunks()) == 1
    again = make_builder(synthetic_root, out)
    with pytest.raises(MemoryBuildError, match='--resume'):
        again.prepare(resume=False, force=False)
    again.prepare(resume=True, force=False)
    again.encode_chunks(progress=False)
    again.merge()
    assert not osp.exists(str(out) + '.build')
    for bank in ('scene', 'object'):
        assert set(BANK_ARRAYS) <= set(bank_digest(osp.join(out, bank)))
        assert bank_digest(osp.join(out, bank)) == bank_digest(osp.join(synthetic_memory, bank))
    a, b = MemoryBank.load(osp.join(out, 'scene')), MemoryBank.load(
        osp.join(synthetic_memory, 'scene'))
    q = np.asarray(a.keys[:4]).copy()
    assert (a.search(q, 3)[1] == b.search(q, 3)[1]).all()


def test_sharded_build_then_merge_is_identical(synthetic_root, synthetic_memory, tmp_path):
    out = tmp_path / 'sharded'
    for i in range(2):
        builder = make_builder(synthetic_root, out)
        builder.prepare(resume=True, force=False)
        builder.encode_chunks(shard=parse_shard(f'{i}/2'), progress=False)
        if i == 0:
            with pytest.raises(MemoryBuildError, match='chunks missing'):
                builder.merge()
    make_builder(synthetic_root, out).merge()
    for bank in ('scene', 'object'):
        assert bank_digest(osp.join(out, bank)) == bank_digest(osp.join(synthetic_memory, bank))


def test_resume_with_another_plan_is_refused(synthetic_root, tmp_path):
    out = tmp_path / 'plan'
    builder = make_builder(synthetic_root, out)
    builder.prepare(resume=False, force=False)
    builder.encode_chunks(progress=False, max_chunks=1)
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root,
                                dict(OPTIONS, **{'memory.key_encoder.seed': 1}))
    other = MemoryBuilder(cfg, out=str(out), device='cpu')
    with pytest.raises(MemoryBuildError, match='key_encoder'):
        other.prepare(resume=True, force=False)
    other.prepare(resume=False, force=True)  # --force discards the partial build
    assert other.done_chunks() == []


def test_parse_shard():
    assert parse_shard('1/4') == (1, 4)
    for bad in ('4/4', 'a/b', '1'):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_build_memory_tool(synthetic_root, tmp_path):
    out = str(tmp_path / 'tool_memory')
    args = ['tools/build_memory.py', MEMORY_CFG, '--out', out, '--device', 'cpu',
            '--cfg-options', 'memory.build.num_workers=0']
    proc = run_tool(args, synthetic_root, cwd=REPO_ROOT)
    assert 'task/s' in proc.stdout and 'ETA' in proc.stdout, proc.stdout[-2000:]
    assert 'memory written to' in proc.stdout + proc.stderr
    memory = MemoryRoot(out)
    assert memory.object_bank.num_values > 0
    proc = run_tool(args, synthetic_root, cwd=REPO_ROOT)
    assert 'up to date' in proc.stdout + proc.stderr
    # query cache of the val split (keys only)
    proc = run_tool(['tools/build_memory.py', MEMORY_CFG, '--split', 'val', '--query-cache-only',
                     '--out', out + '_val', '--device', 'cpu',
                     '--cfg-options', 'memory.build.num_workers=0'], synthetic_root)
    assert len(MemoryRoot(out + '_val').query_cache) == 4
    manifest = json.load(open(osp.join(out + '_val', 'manifest.json')))
    assert manifest['banks'] == dict(scene=None, object=None)
    assert sorted(os.listdir(out + '_val')) == ['.mmmaps_output', 'manifest.json', 'query_cache']
