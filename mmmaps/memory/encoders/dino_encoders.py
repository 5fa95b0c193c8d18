"""DINO (timm ViT) memory encoders: CLS key and dense patch tokens."""
from typing import Dict, List, Optional, Tuple

from torch import Tensor, nn

from mmdet.registry import MODELS
from .base import DenseMemoryEncoder, GlobalMemoryEncoder
from .weights import (DINO_WEIGHTS_HINT, IMAGENET_MEAN, IMAGENET_STD, load_timm_vit,
                      resolve_checkpoint)

__all__ = ['DINOCLSEncoder', 'DINODenseEncoder']


class _DINOTower:
    """Mixin: builds the shared frozen timm ViT and its bookkeeping."""

    def _init_dino(self, arch: str, pretrained: Optional[str], seed: int) -> None:
        checkpoint = resolve_checkpoint(pretrained, DINO_WEIGHTS_HINT)
        self.arch = arch
        self.seed = int(seed)
        self.vit = load_timm_vit(arch, checkpoint, self.seed)
        self._set_checkpoint(checkpoint)
        patch = self.vit.patch_embed.patch_size
        if patch[0] != patch[1]:
            raise ValueError(f'Non-square patches {tuple(patch)} are not supported.')
        self.patch_size = int(patch[0])
        self.out_channels = int(self.vit.num_features)
        self._freeze()

    @property
    def tower(self) -> nn.Module:
        return self.vit

    def _check_image_size(self, image_size: int) -> int:
        if image_size <= 0 or image_size % self.patch_size:
            raise ValueError(f'image_size={image_size} must be a positive multiple of the '
                             f'patch size {self.patch_size} of {self.arch}.')
        return int(image_size)


@MODELS.register_module()
class DINOCLSEncoder(_DINOTower, GlobalMemoryEncoder):
    """DINO CLS token (after the final norm of ``forward_features``) as the memory key.

    Same geometry as :class:`CLIPCLSEncoder`: short side -> ``image_size`` (bicubic),
    central crop; ImageNet mean/std.

    Args:
        arch (str): timm model name. Default ``'vit_base_patch16_224.dino'``.
        pretrained (str | None): state dict file (e.g. ``dino_vitbase16_pretrain.pth``);
            None = random init from ``seed``.
        seed (int): seed of the random init.
        image_size (int): crop size fed to the ViT (multiple of the patch size).

    Output: (B, C) float32, L2-normalised; C = ``out_channels`` (768 for ViT-B/16).
    """

    def __init__(self, arch: str = 'vit_base_patch16_224.dino', pretrained: Optional[str] = None,
                 seed: int = 0, image_size: int = 224):
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        self._init_dino(arch, pretrained, seed)
        if getattr(self.vit, 'cls_token', None) is None:
            raise ValueError(f'{arch} has no CLS token.')
        self.image_size = self._check_image_size(image_size)

    def preprocess(self, image: Tensor) -> Tensor:
        """(3, H, W) float 0-255 -> (3, image_size, image_size) normalised ViT input."""
        return self.normalize_pixels(self.crop(image))

    def _embed(self, batch: Tensor) -> Tensor:
        return self.vit.forward_features(batch)[:, 0]

    def _geometry(self) -> Dict:
        return dict(image_size=self.image_size, patch_size=self.patch_size)


@MODELS.register_module()
class DINODenseEncoder(_DINOTower, DenseMemoryEncoder):
    """DINO patch tokens of the whole image squashed to ``image_size`` squared.

    Args:
        arch, pretrained, seed: as in :class:`DINOCLSEncoder`.
        image_size (int): side of the square ViT input (multiple of the patch size).
        normalize (bool): L2-normalise every feature vector.

    Output: list of (C, image_size/p, image_size/p) float32 maps (768, 14x14 for ViT-B/16).
    """

    def __init__(self, arch: str = 'vit_base_patch16_224.dino', pretrained: Optional[str] = None,
                 seed: int = 0, image_size: int = 224, normalize: bool = True):
        super().__init__(IMAGENET_MEAN, IMAGENET_STD, normalize=normalize)
        self._init_dino(arch, pretrained, seed)
        self.image_size = self._check_image_size(image_size)

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    def _encode(self, images: List[Tensor]) -> List[Tensor]:
        batch = self._whole_image_batch(images, self.image_size)
        tokens = self.vit.forward_features(batch)[:, self.vit.num_prefix_tokens:]
        grid = self.output_size(*batch.shape[2:])
        maps = tokens.reshape(len(images), grid[0], grid[1], -1).permute(0, 3, 1, 2)
        return [self._finish(feature_map) for feature_map in maps]

    def _geometry(self) -> Dict:
        return dict(image_size=self.image_size, patch_size=self.patch_size,
                    **super()._geometry())
