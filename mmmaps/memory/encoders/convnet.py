"""A convolutional stand-in key encoder whose embedding is a *maximum* over positions.

Why it exists: the stand-in for CLIP must know things the detector's few labels do not
teach, e.g. which of 64 small, arbitrary landmark glyphs belongs to a lake rather than a
meadow (``make_synthetic_panoptic.py --variant landmarks``). Trained on the captioned pool
(``tools/pretrain_encoder.py --captions``), towers that pool by attention or by average
never learned that association on 2 CPU cores: the ViT stand-in (CLS token) and open_clip's
ModifiedResNet (attention pool) stayed at ln 2 on meadow/lake for 300-750 steps, and the
same CNN as below with an *average* pool learnt nothing in 100 steps; with a max pool it
reached meadow/lake scene P@5 0.97 in 300 steps (docs/en/maps_evidence.md). A small pattern
anywhere in the image is found by a maximum over positions, diluted by a mean. open_clip has
no max-pooled tower, hence this one; CLIP's own family has CNN towers (RN50), so a CNN is as
fair a stand-in as a ViT.
"""
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from mmdet.registry import MODELS
from .base import GlobalMemoryEncoder
from .weights import (CLIP_MEAN, CLIP_STD, _cached, _ReadingWeights, resolve_checkpoint,
                      seeded_init)

__all__ = ['MaxPoolConvNet', 'CONVNET_ARCHS', 'build_convnet', 'load_convnet',
           'ConvNetMaxPoolEncoder']

# name -> MaxPoolConvNet arguments
CONVNET_ARCHS: Dict[str, dict] = {
    'mmmaps-ConvNet-MaxPool-112': dict(image_size=112, stem_widths=(16, 16, 32),
                                       body_widths=(64, 128), embed_dim=192),
}

STANDIN_HINT = ('tools/pretrain_encoder.py --arch mmmaps-ConvNet-MaxPool-112 writes one (see '
                'configs/maps/maps_r18_synthetic-panoptic_standin-convnet-captioned-landmarks.py)')


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class MaxPoolConvNet(nn.Module):
    """3x3 conv / BN / ReLU layers, then the maximum of each channel over all positions.

    The stem halves the resolution with a strided conv and again with a 2x2 average pool
    (stride 4 overall, like a ResNet stem); the body keeps that resolution, so a cell of
    about 5 px at the input is still a pixel or more where the body sees it.

    Args:
        image_size: side of the square input the encoder feeds it (the network itself
            takes any size).
        stem_widths: channels of the three stem convolutions (the first has stride 2).
        body_widths: channels of the body convolutions before the last.
        embed_dim: channels of the last convolution = the embedding size.

    Input: (B, 3, H, W) normalised images. Output: (B, embed_dim) embeddings (not normalised;
    non-negative, being a maximum of ReLU outputs).
    """

    def __init__(self, image_size: int = 112, stem_widths: Tuple[int, int, int] = (16, 16, 32),
                 body_widths: Tuple[int, ...] = (64, 128), embed_dim: int = 192):
        super().__init__()
        self.image_size = (int(image_size), int(image_size))
        self.output_dim = int(embed_dim)
        first, second, third = stem_widths
        self.stem = nn.Sequential(_conv_bn_relu(3, first, 2), _conv_bn_relu(first, second, 1),
                                  _conv_bn_relu(second, third, 1), nn.AvgPool2d(2))
        widths = (third, *body_widths, embed_dim)
        self.body = nn.Sequential(*[_conv_bn_relu(c_in, c_out, 1)
                                    for c_in, c_out in zip(widths[:-1], widths[1:])])

    def forward(self, images: Tensor) -> Tensor:
        return self.body(self.stem(images)).amax(dim=(2, 3))


def build_convnet(arch: str, seed: int) -> MaxPoolConvNet:
    """A randomly initialised tower of ``arch`` (one of :data:`CONVNET_ARCHS`)."""
    if arch not in CONVNET_ARCHS:
        raise ValueError(f'arch={arch!r} is not a stand-in ConvNet; one of '
                         f'{", ".join(sorted(CONVNET_ARCHS))}')
    with seeded_init(seed):
        return MaxPoolConvNet(**CONVNET_ARCHS[arch])


def load_convnet(arch: str, checkpoint: Optional[str], seed: int) -> MaxPoolConvNet:
    """Frozen, shared tower of ``arch``: its state dict read weights-only from
    ``checkpoint``, or a random init from ``seed`` when it is None."""
    expected = f'a state dict of the {arch} tower ({STANDIN_HINT})'

    def build():
        tower = build_convnet(arch, seed)
        if checkpoint is not None:
            with _ReadingWeights(checkpoint, arch, expected):
                state = torch.load(checkpoint, map_location='cpu', weights_only=True)
                if not isinstance(state, dict):
                    raise TypeError(f'the file holds a {type(state).__name__}, not a dict')
                tower.load_state_dict(state, strict=True)
        return tower

    return _cached(('convnet', arch, checkpoint, int(seed)), build)


@MODELS.register_module()
class ConvNetMaxPoolEncoder(GlobalMemoryEncoder):
    """The max-pooled ConvNet stand-in as the memory key / scene value encoder.

    The same geometry and normalisation as :class:`CLIPCLSEncoder` (short side ->
    ``image_size``, central crop, CLIP mean/std), which is also what
    ``tools/pretrain_encoder.py`` trains it with.

    Args:
        arch (str): one of :data:`CONVNET_ARCHS`.
        pretrained (str | None): the tower's state dict (``tools/pretrain_encoder.py``);
            None = random init from ``seed``.
        seed (int): seed of the random init.

    Output: (B, E) float32, L2-normalised; E = ``out_channels`` (192).
    """

    def __init__(self, arch: str = 'mmmaps-ConvNet-MaxPool-112',
                 pretrained: Optional[str] = None, seed: int = 0):
        super().__init__(CLIP_MEAN, CLIP_STD)
        checkpoint = resolve_checkpoint(pretrained, STANDIN_HINT)
        self.arch = arch
        self.seed = int(seed)
        self.net = load_convnet(arch, checkpoint, self.seed)
        self._set_checkpoint(checkpoint)
        self.out_channels = self.net.output_dim
        self.image_size = self.net.image_size[0]
        self._freeze()

    @property
    def tower(self) -> nn.Module:
        return self.net

    def _embed(self, batch: Tensor) -> Tensor:
        return self.net(batch)

    def _geometry(self) -> Dict:
        return dict(image_size=self.image_size)
