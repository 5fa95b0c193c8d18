"""The max-pooled ConvNet stand-in key encoder: pretrained by tools/pretrain_encoder.py,
loaded weights-only with errors naming the file, embedding what the memory builder and the
model see, and finding a small pattern wherever it is."""
import json
import os.path as osp
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO_ROOT, build_memory, load_config_with_root

sys.path.insert(0, osp.join(REPO_ROOT, 'tools'))
import pretrain_encoder  # noqa: E402

ARCH = 'mmmaps-ConvNet-MaxPool-112'
LANDMARKS_CONVNET = osp.join(REPO_ROOT, 'configs', 'maps',
                             'maps_r18_synthetic-panoptic_standin-convnet-captioned-landmarks.py')
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1) * 255
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1) * 255


class NotATensor:
    """A pickled object of a crafted weights file (the weights-only unpickler refuses it)."""


@pytest.fixture(scope='module')
def convnet_checkpoint(synthetic_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('convnet') / 'convnet.pt')
    assert pretrain_encoder.main(['--arch', ARCH, '--pool', osp.join(synthetic_root, 'train'),
                                  '--out', out, '--steps', '2', '--batch-size', '4',
                                  '--eval-ann', '']) == 0
    return out


def test_encoder_embeds_the_evaluation_crop_with_the_saved_weights(convnet_checkpoint):
    """Reference: the saved state dict read by torch into the tower, fed the image resized
    (short side 112, bicubic) and centre-cropped by hand, CLIP-normalised, L2-normalised."""
    from mmmaps.memory.encoders import build_memory_encoder
    from mmmaps.memory.encoders.convnet import MaxPoolConvNet
    encoder = build_memory_encoder(dict(type='ConvNetMaxPoolEncoder', arch=ARCH,
                                        pretrained=convnet_checkpoint))
    tower = MaxPoolConvNet(image_size=112, stem_widths=(16, 16, 32), body_widths=(64, 128),
                           embed_dim=192)
    tower.load_state_dict(torch.load(convnet_checkpoint, weights_only=True))
    tower.eval()
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(0)) * 255
    resized = F.interpolate(image[None], size=(112, 168), mode='bicubic', antialias=True,
                            align_corners=False).clamp(0, 255)
    crop = resized[..., :, 28:140]
    with torch.no_grad():
        expected = F.normalize(tower(((crop[0] - CLIP_MEAN) / CLIP_STD)[None]), dim=1)
    assert torch.allclose(encoder([image]), expected, atol=1e-5)
    assert encoder.describe()['checkpoint'] == convnet_checkpoint
    # a random init of the same arch is a different key space
    random = build_memory_encoder(dict(type='ConvNetMaxPoolEncoder', arch=ARCH))
    assert not torch.allclose(random([image]), expected, atol=1e-3)


def test_a_small_pattern_gives_the_same_key_wherever_it_is():
    """What the max pool is for: a 12-px glyph on a plain sky, moved by 24 and 28 px (multiples
    of the tower's stride 4), gives the same key (with a mean over positions in place of the
    maximum it does not: checked by mutation), and the glyph turned by 90 degrees does not
    (the key sees the pattern, not only that there is one)."""
    from mmmaps.memory.encoders import build_memory_encoder
    encoder = build_memory_encoder(dict(type='ConvNetMaxPoolEncoder', arch=ARCH, seed=3))
    glyph = torch.tensor([[1., 0., 0.], [1., 1., 0.], [0., 1., 0.]]).repeat_interleave(
        4, 0).repeat_interleave(4, 1) * 200 + 25

    def image(top, left, pattern):
        sky = torch.full((3, 112, 112), 160.)
        sky[:, top:top + 12, left:left + 12] = pattern
        return sky

    # both places are farther from the border than the tower's receptive field (about 40 px)
    keys = encoder([image(36, 36, glyph), image(60, 64, glyph), image(36, 36, glyph.t())])
    assert torch.allclose(keys[0], keys[1], atol=1e-5)
    assert float((keys[0] - keys[2]).abs().max()) > 1e-3


def test_a_second_copy_of_the_pattern_does_not_change_the_key():
    """The maximum over positions: a second copy of the glyph, far from the first and from
    the border, leaves every channel's maximum (so the key) as it was; a mean over positions
    would count the glyph twice."""
    from mmmaps.memory.encoders import build_memory_encoder
    encoder = build_memory_encoder(dict(type='ConvNetMaxPoolEncoder', arch=ARCH, seed=3))
    glyph = torch.tensor([[1., 0., 0.], [1., 1., 0.], [0., 1., 0.]]).repeat_interleave(
        4, 0).repeat_interleave(4, 1) * 200 + 25
    once, twice = torch.full((2, 3, 112, 112), 160.)
    once[:, 28:40, 28:40] = twice[:, 28:40, 28:40] = twice[:, 72:84, 72:84] = glyph
    keys = encoder([once, twice])
    assert torch.equal(keys[0], keys[1])


def test_caption_term_alone_teaches_the_convnet_an_arbitrary_caption(synthetic_root):
    """``simclr_weight=0``: only the captions train the tower. Captions unrelated to content
    (alternating by file order) separate after 25 steps: the cosine gap between images of
    one caption and of the other grows over the untrained tower's."""
    from mmmaps.memory.encoders.convnet import build_convnet
    from mmmaps.memory.encoders.self_supervised import (list_images, load_image_pool,
                                                        pretrain_clip_visual)
    pool = load_image_pool(list_images(osp.join(synthetic_root, 'train'))[:8], 64)
    captions = torch.arange(8) % 2
    same = (captions[:, None] == captions[None]) & ~torch.eye(8, dtype=torch.bool)
    other = captions[:, None] != captions[None]
    images = (F.interpolate(pool.float(), size=112) - CLIP_MEAN) / CLIP_STD

    def gap(tower):
        tower.eval()
        with torch.no_grad():
            keys = F.normalize(tower(images), dim=1)
        cosine = keys @ keys.t()
        return float(cosine[same].mean() - cosine[other].mean())

    untrained = gap(build_convnet(ARCH, 0))
    tower = build_convnet(ARCH, 0)
    pretrain_clip_visual(tower, pool, steps=25, batch_size=8, seed=0, lr=2e-3,
                         captions=captions, simclr_weight=0.0, log=None)
    trained = gap(tower)
    assert trained > untrained + 0.1, (untrained, trained)
    with pytest.raises(ValueError, match='simclr_weight=0.0'):
        pretrain_clip_visual(build_convnet(ARCH, 0), pool, steps=1, batch_size=8, seed=0,
                             simclr_weight=0.0, log=None)


def test_weights_of_another_tower_or_a_broken_file_are_refused_naming_the_key(tmp_path):
    from mmmaps.memory.encoders import build_memory_encoder
    from mmmaps.memory.encoders.self_supervised import build_open_clip_model
    from mmmaps.memory.encoders.weights import (EncoderWeightsError,
                                                UntrustedEncoderWeightsError)
    vit = tmp_path / 'vit.pt'
    torch.save(build_open_clip_model('mmmaps-ViT-Ti-16-112', 0).state_dict(), vit)
    broken = tmp_path / 'broken.pt'
    broken.write_bytes(vit.read_bytes()[:1000])

    crafted = tmp_path / 'crafted.pt'
    torch.save({'stem.0.0.weight': NotATensor()}, crafted)
    key = 'memory.key_encoder'
    for path, error, problem in ((vit, EncoderWeightsError, 'does not fit the ' + ARCH),
                                 (broken, EncoderWeightsError, 'cannot be read'),
                                 (crafted, UntrustedEncoderWeightsError, 'not tensors')):
        with pytest.raises(error, match=problem) as info:
            build_memory_encoder(dict(type='ConvNetMaxPoolEncoder', arch=ARCH,
                                      pretrained=str(path)), key)
        assert str(info.value).startswith(f'{key}.pretrained = {path}')
    with pytest.raises(FileNotFoundError, match='pretrain_encoder.py --arch ' + ARCH):
        build_memory_encoder(dict(type='ConvNetMaxPoolEncoder', arch=ARCH,
                                  pretrained=str(tmp_path / 'missing.pt')), key)
    with pytest.raises(ValueError, match='not a stand-in ConvNet'):
        build_memory_encoder(dict(type='ConvNetMaxPoolEncoder', arch='ViT-B-16'), key)


def test_landmarks_config_builds_its_memory_with_the_convnet_keys(convnet_checkpoint,
                                                                  synthetic_root, tmp_path):
    """The config's key encoder is the ConvNet (keys and scene values from the file given),
    its dense encoder the ViT stand-in; the memory goes through the builder unchanged."""
    import mmcv
    import numpy as np
    from mmmaps.memory.memory_root import MemoryRoot
    from mmmaps.memory.encoders import build_memory_encoder
    from mmmaps.memory.encoders.self_supervised import build_open_clip_model
    vit = str(tmp_path / 'vit.pt')
    torch.save(build_open_clip_model('mmmaps-ViT-Ti-16-112', 0).state_dict(), vit)
    cfg = load_config_with_root(LANDMARKS_CONVNET, synthetic_root, {
        'memory.key_encoder.pretrained': convnet_checkpoint,
        'memory.dense_encoder.pretrained': vit,
        'memory.build.chunk_size': 4, 'memory.build.num_workers': 0})
    out = str(tmp_path / 'memory')
    builder = build_memory(cfg, out)
    assert builder.plan['key_encoder']['type'] == 'ConvNetMaxPoolEncoder'
    assert builder.plan['dense_encoder']['type'] == 'TiledCLIPDenseEncoder'
    # every scene row holds the ConvNet's key of its image file, and that key as its value
    memory = MemoryRoot(out)
    encoder = build_memory_encoder(dict(type='ConvNetMaxPoolEncoder', arch=ARCH,
                                        pretrained=convnet_checkpoint))
    with open(osp.join(synthetic_root, 'annotations', 'panoptic_train.json')) as f:
        images = json.load(f)['images']
    for image in images:
        rgb = mmcv.imread(osp.join(synthetic_root, 'train', image['file_name']),
                          channel_order='rgb')
        key = encoder([torch.from_numpy(rgb).permute(2, 0, 1)])[0].numpy()
        row = memory.scene_bank.row_of_image_id(image['id'])
        np.testing.assert_allclose(memory.scene_bank.keys[row], key, atol=1e-5)
        np.testing.assert_allclose(np.asarray(memory.scene_bank.values_of(row)[0], np.float32),
                                   key, rtol=2 ** -10, atol=1e-6)
