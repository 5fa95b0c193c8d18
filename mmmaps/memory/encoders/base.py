"""Common behaviour of the frozen image encoders that feed the MAPS memory."""
import inspect
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdet.registry import MODELS
from .weights import file_sha256, weights_fingerprint

__all__ = [
    'BaseMemoryEncoder', 'GlobalMemoryEncoder', 'DenseMemoryEncoder', 'build_memory_encoder',
    'check_encoder_cfg', 'memory_encoder_types', 'ImageBatch'
]

ImageBatch = Union[Tensor, Sequence[Tensor]]


def resize_image(image: Tensor, size: Tuple[int, int]) -> Tensor:
    """Bicubic, antialiased resize of a (3, H, W) or (B, 3, H, W) float image on the 0-255
    scale, clamped back to [0, 255] (bicubic overshoots)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    batched = image if image.dim() == 4 else image[None]
    out = F.interpolate(batched, size=tuple(size), mode='bicubic', antialias=True,
                        align_corners=False).clamp_(0, 255)
    return out if image.dim() == 4 else out[0]


def short_side_size(height: int, width: int, short_side: int) -> Tuple[int, int]:
    """Size with the short side set to ``short_side`` and the aspect ratio kept.

    The long side is truncated, like ``torchvision.transforms.Resize(int)`` that open_clip
    uses for its evaluation transform.
    """
    if height <= width:
        return short_side, max(short_side, int(short_side * width / height))
    return max(short_side, int(short_side * height / width)), short_side


def center_crop(image: Tensor, size: int) -> Tensor:
    """Central ``size`` x ``size`` window of a (C, H, W) image (torchvision's rounding)."""
    height, width = image.shape[-2:]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image[..., top:top + size, left:left + size]


def resize_center_crop(image: Tensor, size: int) -> Tensor:
    """open_clip-style evaluation geometry: short side -> ``size``, then central crop."""
    resized = resize_image(image, short_side_size(image.shape[-2], image.shape[-1], size))
    return center_crop(resized, size)


def round_to_multiple(value: float, multiple: int) -> int:
    """Nearest positive multiple of ``multiple`` (halves round up)."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)


def patch_aligned_size(height: int, width: int, short_side: int,
                       patch_size: int) -> Tuple[int, int]:
    """Short side -> ``short_side``, long side scaled by the same factor and rounded to a
    multiple of ``patch_size``."""
    scale = short_side / min(height, width)
    if height <= width:
        return short_side, round_to_multiple(width * scale, patch_size)
    return round_to_multiple(height * scale, patch_size), short_side


class BaseMemoryEncoder(nn.Module):
    """A frozen image encoder: raw RGB images in, memory keys or dense features out.

    Subclasses set ``kind`` and implement ``_encode``. The encoder applies its own
    normalisation (``mean``/``std`` buffers, RGB, 0-255 scale), never has trainable
    parameters and stays in eval mode whatever ``train()`` is called with.

    Input of ``forward``: a list of RGB tensors (3, H, W) of any sizes, or a tensor
    (B, 3, H, W); uint8 or float values in [0, 255]; any device (moved to the encoder's).
    """

    kind: str = ''

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(3, 1, 1),
                             persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(3, 1, 1),
                             persistent=False)
        self.out_channels: int = 0
        self._checkpoint: Optional[str] = None
        self._checkpoint_sha256: Optional[str] = None
        self._weights_sha256: Optional[str] = None

    # ----------------------------------------------------------------- frozen module
    def _freeze(self) -> None:
        for param in self.parameters():
            param.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> 'BaseMemoryEncoder':
        """Always stays in eval mode: the encoders are frozen feature extractors."""
        return super().train(False)

    @property
    def tower(self) -> nn.Module:
        """The backbone network (shared between encoders with the same weights spec)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.tower.parameters()).device

    # ----------------------------------------------------------------- input handling
    def _to_image_list(self, images: ImageBatch) -> List[Tensor]:
        """Validate the input and return float32 (3, H, W) tensors on the encoder's device."""
        if isinstance(images, Tensor):
            if images.dim() != 4:
                raise ValueError('A tensor input must have shape (B, 3, H, W); got '
                                 f'{tuple(images.shape)}. Wrap a single image in a list.')
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            raise TypeError(f'Expected a list of (3, H, W) tensors or a (B, 3, H, W) tensor, '
                            f'got {type(images).__name__}.')
        device = self.device
        out = []
        for i, image in enumerate(images):
            if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(f'Image {i} must be an RGB tensor (3, H, W); got {shape}.')
            if not (image.dtype == torch.uint8 or image.is_floating_point()):
                raise TypeError(f'Image {i} must be uint8 or float in [0, 255]; got {image.dtype}.')
            out.append(image.to(device=device, dtype=torch.float32))
        return out

    def normalize_pixels(self, image: Tensor) -> Tensor:
        """(x - mean) / std with the encoder's own statistics; x on the 0-255 scale."""
        return (image - self.mean.to(image.device)) / self.std.to(image.device)

    @torch.no_grad()
    def forward(self, images: ImageBatch):
        images = self._to_image_list(images)
        if not images:
            return self._empty()
        # Full precision whatever autocast context the caller is in, so that the keys
        # computed while training match the ones stored in the memory bank.
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self._encode(images)

    def _encode(self, images: List[Tensor]):
        raise NotImplementedError

    def _empty(self):
        raise NotImplementedError

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.tower.parameters()).dtype

    # ----------------------------------------------------------------- description
    def _set_checkpoint(self, checkpoint: Optional[str]) -> None:
        self._checkpoint = checkpoint

    def _geometry(self) -> Dict:
        """Encoder-specific parameters that change the output (sizes, flags)."""
        return {}

    def describe(self) -> Dict:
        """JSON-serialisable description recorded in the memory manifests.

        ``weights_sha256`` fingerprints the weights actually loaded (a sample of every
        tensor), so two random initialisations with different seeds differ.
        """
        if self._checkpoint is not None and self._checkpoint_sha256 is None:
            self._checkpoint_sha256 = file_sha256(self._checkpoint)
        if self._weights_sha256 is None:
            self._weights_sha256 = weights_fingerprint(self.tower)
        info = dict(
            type=type(self).__name__,
            kind=self.kind,
            arch=getattr(self, 'arch', None),
            checkpoint=self._checkpoint,
            checkpoint_sha256=self._checkpoint_sha256,
            seed=getattr(self, 'seed', None),
            weights_sha256=self._weights_sha256,
            out_channels=int(self.out_channels),
            mean=[round(float(v), 6) for v in self.mean.flatten()],
            std=[round(float(v), 6) for v in self.std.flatten()],
        )
        info.update(self._geometry())
        return info


class GlobalMemoryEncoder(BaseMemoryEncoder):
    """An encoder that maps each image to one vector.

    ``forward(images)`` returns a float32 tensor (B, out_channels), L2-normalised along C.
    """

    kind = 'global'

    image_size: int = 0

    def _empty(self) -> Tensor:
        return torch.zeros(0, self.out_channels, device=self.device)

    def _finish(self, features: Tensor) -> Tensor:
        return F.normalize(features.float(), dim=-1)

    def crop(self, image: Tensor) -> Tensor:
        """(3, H, W) float 0-255 -> the (3, S, S) 0-255 crop the tower sees (S =
        ``image_size``; open_clip's evaluation geometry: short side -> S, central crop)."""
        return resize_center_crop(image, self.image_size)

    def embed_crops(self, crops: Tensor) -> Tensor:
        """(B, 3, S, S) 0-255 RGB crops -> (B, out_channels) L2-normalised keys: the
        encoder's normalisation, tower and L2 norm (what its ONNX graph holds)."""
        return self._finish(self._embed(self.normalize_pixels(crops).to(self._dtype)))

    def _embed(self, batch: Tensor) -> Tensor:
        """(B, 3, S, S) normalised tower input -> (B, out_channels) embeddings."""
        raise NotImplementedError

    def _encode(self, images: List[Tensor]) -> Tensor:
        return self.embed_crops(torch.stack([self.crop(image) for image in images]))


class DenseMemoryEncoder(BaseMemoryEncoder):
    """An encoder that maps each image to a feature map.

    ``forward(images)`` returns a list of B float32 tensors (out_channels, h, w), with
    (h, w) = ``output_size(H, W)`` for an input of size (H, W); L2-normalised along C when
    ``normalize`` is True.
    """

    kind = 'dense'

    def __init__(self, mean: Sequence[float], std: Sequence[float], normalize: bool = True):
        super().__init__(mean, std)
        self.normalize = bool(normalize)

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        """Grid size (h, w) of the feature map returned for an input of size (height, width)."""
        raise NotImplementedError

    def _empty(self) -> List[Tensor]:
        return []

    def _whole_image_batch(self, images: List[Tensor], side: int) -> Tensor:
        """(B, 3, side, side): each whole image resized (no crop, so the grid covers it)."""
        return torch.stack([self.normalize_pixels(resize_image(image, (side, side)))
                            for image in images]).to(self._dtype)

    def _finish(self, feature_map: Tensor) -> Tensor:
        feature_map = feature_map.float()
        return F.normalize(feature_map, dim=0) if self.normalize else feature_map

    def _geometry(self) -> Dict:
        return dict(normalize=self.normalize)


_BUILD_KEYS = dict(type='the encoder class', _scope_='registry scope')


def memory_encoder_types() -> List[str]:
    """Names of the registered memory encoder classes."""
    return sorted(name for name, cls in MODELS.module_dict.items()
                  if isinstance(cls, type) and issubclass(cls, BaseMemoryEncoder))


def check_encoder_cfg(cfg: Mapping, key: str = 'memory encoder') -> type:
    """The encoder class a config names, after checking every key of the config is one of
    that class's arguments.

    Args:
        cfg: ``dict(type=..., **arguments)``.
        key: Where the config is, for errors (e.g. ``'memory.key_encoder'``).

    Raises:
        MemoryConfigError: naming ``<key>.<unknown argument>`` and the known ones, or
            ``<key>.type`` when it names no memory encoder.
    """
    from ..config_schema import MemoryConfigError, unknown_keys_message
    if not isinstance(cfg, Mapping):
        raise MemoryConfigError(f'{key} must be a dict (type=... and its arguments), got '
                                f'{type(cfg).__name__}')
    kind = cfg.get('type')
    cls = MODELS.get(kind) if isinstance(kind, str) else kind
    if kind is None or not isinstance(cls, type):
        raise MemoryConfigError(f'{key}.type={kind!r} names no registered class; a memory '
                                f'encoder is one of {", ".join(memory_encoder_types())}')
    if not issubclass(cls, BaseMemoryEncoder):
        raise TypeError(
            f'{key}: type={kind!r} is a {cls.__name__}, which is not a BaseMemoryEncoder; use '
            f'one of {", ".join(memory_encoder_types())}.')
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return cls
    arguments = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    known = dict(_BUILD_KEYS, **{name: '' for name, p in params.items()
                                 if name != 'self' and p.kind in arguments})
    unknown = [name for name in cfg if name not in known]
    if unknown:
        raise MemoryConfigError(unknown_keys_message(key, unknown, known,
                                                     owner=f'{key} (type {cls.__name__})'))
    return cls


def build_memory_encoder(cfg: Mapping, key: str = 'memory encoder') -> BaseMemoryEncoder:
    """Build a memory encoder from a config dict (``type`` one of the registered encoders).

    Args:
        cfg: ``dict(type=..., **arguments)``; its keys are checked first
            (:func:`check_encoder_cfg`).
        key: Where the config is (e.g. ``'memory.key_encoder'``): errors about the config
            and about its weights file (``<key>.pretrained``) name it.
    """
    from ..config_schema import MemoryConfigError
    from .weights import EncoderWeightsError
    cls = check_encoder_cfg(cfg, key)
    kwargs = {name: value for name, value in cfg.items() if name not in _BUILD_KEYS}
    try:
        return cls(**kwargs)
    except EncoderWeightsError as exc:
        raise exc.at_key(f'{key}.pretrained') from exc.__cause__
    except MemoryConfigError as exc:
        raise MemoryConfigError(f'{key}: {exc}') from None
    except FileNotFoundError as exc:
        raise FileNotFoundError(f'{key}.pretrained: {exc}') from None
