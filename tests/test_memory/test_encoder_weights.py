"""A memory encoder's weights file that is not what its config says is one error naming the
file, the config key that points at it and what was expected.

Issue 29: a crafted or truncated ``memory.key_encoder.pretrained`` (the stand-in / CLIP /
TiledCLIP encoders) or DINO ``pretrained`` file ended in a bare torch/timm error, and
``mmmaps-ViT-Ti-16-112`` without ``image_size=112`` in a tensor size mismatch.
"""
import hashlib
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from tests.conftest import MEMORY_CFG, REPO_ROOT

STANDIN = 'mmmaps-ViT-Ti-16-112'
DINO = 'vit_small_patch16_224.dino'


def _sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope='module')
def weight_files(tmp_path_factory):
    """A valid stand-in checkpoint (random weights) and broken files beside it."""
    import open_clip

    from mmmaps.memory.encoders.weights import register_open_clip_configs, seeded_init
    folder = tmp_path_factory.mktemp('encoder_weights')
    register_open_clip_configs()
    with seeded_init(0):
        model = open_clip.create_model(STANDIN)
    good = str(folder / 'standin.pt')
    torch.save(model.state_dict(), good)
    with open(good, 'rb') as f:
        data = f.read()
    files = dict(good=good, truncated=str(folder / 'truncated.pt'),
                 other=str(folder / 'other_model.pt'))
    with open(files['truncated'], 'wb') as f:
        f.write(data[:len(data) // 2])
    torch.save({'head.weight': torch.zeros(4, 4)}, files['other'])  # a crafted foreign dict
    return files


@pytest.fixture(autouse=True)
def _fresh_towers():
    from mmmaps.memory.encoders.weights import clear_tower_cache
    clear_tower_cache()
    yield
    clear_tower_cache()


@pytest.mark.parametrize('kind,problem', [('truncated', 'cannot be read: it is truncated'),
                                          ('other', 'does not fit the mmmaps-ViT-Ti-16-112')])
@pytest.mark.parametrize('encoder', ['CLIPCLSEncoder', 'TiledCLIPDenseEncoder'])
def test_broken_clip_weights_name_the_file_and_key(weight_files, kind, problem, encoder):
    from mmmaps.memory import MemoryBankError, build_memory_encoder
    path = weight_files[kind]
    before = _sha256(path)
    key = 'memory.key_encoder' if encoder == 'CLIPCLSEncoder' else 'memory.dense_encoder'
    extra = dict(tile_size=112, short_side=224) if encoder != 'CLIPCLSEncoder' else {}
    with pytest.raises(MemoryBankError) as err:
        build_memory_encoder(dict(type=encoder, arch=STANDIN, pretrained=path, **extra), key)
    message = str(err.value)
    assert message.startswith(f'{key}.pretrained = {path}: {problem}'), message
    assert f'expected an open_clip state dict of {STANDIN}' in message and '\n' not in message
    assert _sha256(path) == before


@pytest.mark.parametrize('kind,problem', [('truncated', 'cannot be read: it is truncated'),
                                          ('other', f'does not fit the {DINO} tower')])
def test_broken_dino_weights_name_the_file_and_key(weight_files, kind, problem):
    from mmmaps.memory import MemoryBankError, build_memory_encoder
    path = weight_files[kind]
    before = _sha256(path)
    with pytest.raises(MemoryBankError) as err:
        build_memory_encoder(dict(type='DINODenseEncoder', arch=DINO, pretrained=path),
                             'memory.dense_encoder')
    message = str(err.value)
    assert message.startswith(f'memory.dense_encoder.pretrained = {path}: {problem}'), message
    assert f'expected a state dict of the timm model {DINO}' in message and '\n' not in message
    assert _sha256(path) == before


def test_truncated_key_encoder_weights_refused_by_build_memory(weight_files, synthetic_root,
                                                               tmp_path):
    """The tool exits with one line naming the key and the file; nothing is written."""
    path = weight_files['truncated']
    before = _sha256(path)
    out = tmp_path / 'memory'
    env = dict(os.environ, MMMAPS_SYNTHETIC_ROOT=synthetic_root, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT,
                                                        os.environ.get('PYTHONPATH')])))
    proc = subprocess.run(
        [sys.executable, 'tools/build_memory.py', MEMORY_CFG, '--out', str(out),
         '--cfg-options', f'memory.key_encoder.arch={STANDIN}',
         f'memory.key_encoder.pretrained={path}', 'memory.build.num_workers=0'],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f'build_memory.py: error: memory.key_encoder.pretrained = {path}: '
                           'cannot be read'), proc.stderr[-2000:]
    assert not osp.exists(out)
    assert _sha256(path) == before


def test_standin_without_image_size_takes_the_towers_size(weight_files):
    """mmmaps-ViT-Ti-16-112 takes 112x112 crops: without image_size the encoder uses them
    (it used to crop 224 and fail in the tower); the key equals the tower's own output on
    the 112 crop (reference: open_clip's forward on the same crop)."""
    import open_clip

    from mmmaps.memory import build_memory_encoder
    from mmmaps.memory.encoders.base import resize_center_crop
    from mmmaps.memory.encoders.weights import CLIP_MEAN, CLIP_STD
    encoder = build_memory_encoder(dict(type='CLIPCLSEncoder', arch=STANDIN,
                                        pretrained=weight_files['good']), 'memory.key_encoder')
    image = torch.randint(0, 256, (3, 90, 150), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    key = encoder([image])
    assert encoder.image_size == 112 and encoder.describe()['image_size'] == 112
    model = open_clip.create_model(STANDIN, pretrained=weight_files['good'])
    crop = resize_center_crop(image.float(), 112)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    with torch.no_grad():
        reference = torch.nn.functional.normalize(model.visual(((crop - mean) / std)[None]),
                                                  dim=-1)
    assert torch.allclose(key, reference, atol=1e-5)


def test_standin_with_another_image_size_names_the_size_it_needs(weight_files):
    from mmmaps.memory import MemoryBankError, build_memory_encoder
    path = weight_files['good']
    with pytest.raises(MemoryBankError) as err:
        build_memory_encoder(dict(type='CLIPCLSEncoder', arch=STANDIN, pretrained=path,
                                  image_size=224), 'memory.key_encoder')
    message = str(err.value)
    assert message.startswith(f'memory.key_encoder: image_size=224 does not fit the {STANDIN} '
                              f'tower ({path})'), message
    assert 'set image_size=112' in message
