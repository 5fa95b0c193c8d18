"""CLIP (open_clip ViT) memory encoders: CLS key and three dense extractors.

Dense features are the patch tokens after ``ln_post``, projected with ``visual.proj`` so
they live in the same space (and have the same width) as the CLS embedding.
"""
from collections import defaultdict
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdet.registry import MODELS
from .base import (DenseMemoryEncoder, GlobalMemoryEncoder, patch_aligned_size,
                   resize_image)
from .weights import (CLIP_MEAN, CLIP_STD, CLIP_WEIGHTS_HINT, default_quick_gelu,
                      load_clip_visual, resolve_checkpoint)

__all__ = [
    'CLIPCLSEncoder', 'CLIPImageDenseEncoder', 'TiledCLIPDenseEncoder', 'MaskCLIPDenseEncoder',
    'TileSpec', 'clip_patch_size', 'clip_tokens'
]


# --------------------------------------------------------------------- tower helpers
def clip_patch_size(visual: nn.Module) -> int:
    """Patch size of an open_clip ViT visual tower (square patches only)."""
    if not (hasattr(visual, 'conv1') and hasattr(visual, 'transformer')):
        raise TypeError(f'{type(visual).__name__} is not an open_clip VisionTransformer; the '
                        'CLIP memory encoders need a plain open_clip ViT (e.g. ViT-B-16).')
    ph, pw = visual.conv1.kernel_size
    if ph != pw:
        raise ValueError(f'Non-square patches ({ph}x{pw}) are not supported.')
    return int(ph)


def _check_dense_compatible(visual: nn.Module, maskclip: bool = False) -> None:
    clip_patch_size(visual)
    if (getattr(visual, 'attn_pool', None) is not None or visual.proj is None
            or getattr(visual, 'final_ln_after_pool', False)):
        raise ValueError('Dense CLIP features need a ViT whose tokens all go through ln_post '
                         'and proj (no attentional pooling, no final_ln_after_pool).')
    if maskclip:
        block = visual.transformer.resblocks[-1]
        if not (hasattr(block, 'ln_1') and isinstance(block.attn, nn.MultiheadAttention)):
            raise ValueError('MaskCLIP needs the last block to use nn.MultiheadAttention '
                             f'(got {type(block).__name__}).')


def _positional_embedding(visual: nn.Module, grid: Tuple[int, int]) -> Tensor:
    """(1 + gh * gw, D) positional embedding, bicubically resampled when the token grid
    differs from the one the tower was trained at."""
    pos = visual.positional_embedding
    if tuple(grid) == tuple(visual.grid_size):
        return pos
    g0, g1 = visual.grid_size
    cls_pos, grid_pos = pos[:1], pos[1:]
    grid_pos = grid_pos.reshape(1, g0, g1, -1).permute(0, 3, 1, 2).float()
    grid_pos = F.interpolate(grid_pos, size=tuple(grid), mode='bicubic', align_corners=False)
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([cls_pos, grid_pos], dim=0)


def _value_only_attention(block: nn.Module, x: Tensor) -> Tensor:
    """MaskCLIP's last block: the attention branch with q/k removed, i.e. every token goes
    through the value and output projections on its own; no residual, no MLP."""
    attn = block.attn
    dim = attn.embed_dim
    y = block.ln_1(x)
    if attn._qkv_same_embed_dim:
        weight = attn.in_proj_weight[2 * dim:]
    else:
        weight = attn.v_proj_weight
    bias = attn.in_proj_bias[2 * dim:] if attn.in_proj_bias is not None else None
    out = attn.out_proj(F.linear(y, weight, bias))
    return block.ls_1(out)  # LayerScale of the attention branch (Identity for OpenAI CLIP)


def clip_tokens(visual: nn.Module, x: Tensor, maskclip: bool = False) -> Tensor:
    """All output tokens of an open_clip ViT, after ``ln_post`` and ``proj``.

    Args:
        visual: open_clip VisionTransformer.
        x: normalised images (B, 3, H, W), H and W multiples of the patch size.
        maskclip: replace the last block by its value-only attention branch.

    Returns:
        Tensor (B, 1 + H/p * W/p, E): the CLS token first, then the patch tokens row-major.
    """
    tokens = visual.conv1(x)
    batch, _, gh, gw = tokens.shape
    tokens = tokens.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(tokens.dtype).expand(batch, 1, -1)
    tokens = torch.cat([cls, tokens], dim=1) + _positional_embedding(visual, (gh, gw))
    tokens = visual.ln_pre(tokens)

    transformer = visual.transformer
    # open_clip >= 2.2x builds batch-first transformers; older configs were sequence-first
    batch_first = getattr(transformer, 'batch_first', True)
    if not batch_first:
        tokens = tokens.transpose(0, 1)
    blocks = transformer.resblocks
    for block in blocks[:-1]:
        tokens = block(tokens)
    tokens = _value_only_attention(blocks[-1], tokens) if maskclip else blocks[-1](tokens)
    if not batch_first:
        tokens = tokens.transpose(0, 1)
    return visual.ln_post(tokens) @ visual.proj


def _patch_grid(tokens: Tensor, grid: Tuple[int, int]) -> Tensor:
    """(B, 1 + gh*gw, E) tokens -> (B, E, gh, gw) patch feature maps."""
    patches = tokens[:, 1:]
    return patches.reshape(patches.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2)


class _CLIPTower:
    """Mixin: builds the shared frozen open_clip visual tower and its bookkeeping."""

    def _init_clip(self, arch: str, pretrained: Optional[str], seed: int,
                   quick_gelu: Optional[bool]) -> None:
        checkpoint = resolve_checkpoint(pretrained, CLIP_WEIGHTS_HINT)
        self.arch = arch
        self.seed = int(seed)
        self.quick_gelu = default_quick_gelu(arch) if quick_gelu is None else bool(quick_gelu)
        self.visual = load_clip_visual(arch, checkpoint, self.seed, self.quick_gelu)
        self._set_checkpoint(checkpoint)
        self.patch_size = clip_patch_size(self.visual)
        self.out_channels = int(self.visual.output_dim)
        self._freeze()

    @property
    def tower(self) -> nn.Module:
        return self.visual

    def _check_multiple(self, name: str, value: int) -> int:
        if value <= 0 or value % self.patch_size:
            raise ValueError(f'{name}={value} must be a positive multiple of the patch size '
                             f'{self.patch_size} of {self.arch}.')
        return int(value)

    def _clip_geometry(self) -> Dict:
        return dict(quick_gelu=self.quick_gelu, patch_size=self.patch_size)


# --------------------------------------------------------------------- encoders
@MODELS.register_module()
class CLIPCLSEncoder(_CLIPTower, GlobalMemoryEncoder):
    """CLIP image embedding (pooled CLS token @ proj) as the memory key / scene value.

    Preprocessing follows open_clip's evaluation transform: short side -> ``image_size``
    (bicubic), central ``image_size`` crop, CLIP mean/std.

    Args:
        arch (str): open_clip model name. Default ``'ViT-B-16'``.
        pretrained (str | None): open_clip checkpoint file; None = random init from ``seed``.
        seed (int): seed of the random init.
        image_size (int | None): crop size fed to the tower. The tower's pooled embedding
            only exists at the input size its positional embedding was made for (224 for
            ViT-B-16 and ViT-S-16, 112 for mmmaps-ViT-Ti-16-112): None (default) takes that
            size from the tower; another value is refused naming the size it needs.
        quick_gelu (bool | None): QuickGELU MLPs; None = what open_clip's OpenAI weights for
            ``arch`` use (True for ViT-B-16, whose OpenAI checkpoint needs it).

    Output: (B, E) float32, L2-normalised; E = ``out_channels`` (512 for ViT-B-16).
    """

    def __init__(self, arch: str = 'ViT-B-16', pretrained: Optional[str] = None, seed: int = 0,
                 image_size: Optional[int] = None, quick_gelu: Optional[bool] = None):
        super().__init__(CLIP_MEAN, CLIP_STD)
        self._init_clip(arch, pretrained, seed, quick_gelu)
        self.image_size = self._native_image_size(image_size)

    def _native_image_size(self, image_size: Optional[int]) -> int:
        """The tower's input size; ``image_size`` must be it when given."""
        from ..config_schema import MemoryConfigError
        height, width = (int(v) for v in self.visual.image_size)
        if height != width:
            raise ValueError(f'{self.arch} takes {height}x{width} inputs; the CLS encoder '
                             'crops squares.')
        if image_size is not None and int(image_size) != height:
            weights = self._checkpoint or f'random init, seed {self.seed}'
            raise MemoryConfigError(
                f'image_size={image_size} does not fit the {self.arch} tower ({weights}): its '
                f'positional embedding covers {height // self.patch_size}x'
                f'{width // self.patch_size} patches of {self.patch_size} px, so it takes '
                f'{height}x{width} crops; set image_size={height} (or leave it unset: it is '
                'then taken from the tower)')
        return height

    def preprocess(self, image: Tensor) -> Tensor:
        """(3, H, W) float 0-255 -> (3, image_size, image_size) normalised tower input."""
        return self.normalize_pixels(self.crop(image))

    def _embed(self, batch: Tensor) -> Tensor:
        return self.visual(batch)

    def _geometry(self) -> Dict:
        return dict(image_size=self.image_size, **self._clip_geometry())


@MODELS.register_module()
class CLIPImageDenseEncoder(_CLIPTower, DenseMemoryEncoder):
    """Projected CLIP patch tokens of the whole image squashed to ``image_size`` squared.

    No crop, so the grid covers the full image and aligns with its masks.

    Args:
        arch, pretrained, seed, quick_gelu: as in :class:`CLIPCLSEncoder`.
        image_size (int): side of the square tower input (multiple of the patch size).
        normalize (bool): L2-normalise every feature vector.

    Output: list of (E, image_size/p, image_size/p) float32 maps (E = 512, 14x14 for ViT-B-16).
    """

    def __init__(self, arch: str = 'ViT-B-16', pretrained: Optional[str] = None, seed: int = 0,
                 image_size: int = 224, normalize: bool = True,
                 quick_gelu: Optional[bool] = None):
        super().__init__(CLIP_MEAN, CLIP_STD, normalize=normalize)
        self._init_clip(arch, pretrained, seed, quick_gelu)
        _check_dense_compatible(self.visual)
        self.image_size = self._check_multiple('image_size', image_size)

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    def _encode(self, images: List[Tensor]) -> List[Tensor]:
        batch = self._whole_image_batch(images, self.image_size)
        maps = _patch_grid(clip_tokens(self.visual, batch), self.output_size(*batch.shape[2:]))
        return [self._finish(feature_map) for feature_map in maps]

    def _geometry(self) -> Dict:
        return dict(image_size=self.image_size, **self._clip_geometry(), **super()._geometry())


class TileSpec(NamedTuple):
    """One tile of :class:`TiledCLIPDenseEncoder`.

    ``y0, x0``: top-left pixel in the resized image. ``src``: (row0, row1, col0, col1) cells
    of the tile's own token grid that are kept; ``dst``: the same cells in the full grid.
    """
    y0: int
    x0: int
    src: Tuple[int, int, int, int]
    dst: Tuple[int, int, int, int]


def _axis_tiles(length: int, tile: int, patch: int) -> List[Tuple[int, int, int]]:
    """(start pixel, first kept cell, end kept cell) of the tiles along one axis.

    Regular tiles at stride ``tile`` keep all their cells; when ``length`` is not a multiple
    of ``tile``, one more tile ends at the border and keeps only the cells no regular tile
    covered.
    """
    cells = tile // patch
    count = length // tile
    tiles = [(i * tile, 0, cells) for i in range(count)]
    covered = count * tile
    if covered < length:
        start = length - tile
        tiles.append((start, (covered - start) // patch, cells))
    return tiles


@MODELS.register_module()
class TiledCLIPDenseEncoder(_CLIPTower, DenseMemoryEncoder):
    """Dense CLIP features from ``tile_size`` crops of a higher-resolution image (default).

    The image is resized so its short side is ``short_side`` and its long side keeps the
    aspect ratio, rounded to a multiple of the patch size p (each side at least
    ``tile_size``): size (H', W'). Non-overlapping ``tile_size`` tiles cover it, plus one
    tile flush with the far border per axis for the remainder; all tiles of all images of a
    call are encoded in batches of ``tile_batch_size`` and their projected patch tokens are
    written into the (H'/p, W'/p) grid, every cell exactly once (border tiles only write
    the cells the regular tiles left uncovered).

    Args:
        arch, pretrained, seed, quick_gelu: as in :class:`CLIPCLSEncoder`.
        short_side (int): short side of the resized image (multiple of p).
        tile_size (int): tile side in pixels (multiple of p).
        tile_batch_size (int): tiles per tower forward pass.
        normalize (bool): L2-normalise every feature vector.

    Output: list of (E, H'/p, W'/p) float32 maps, (H'/p, W'/p) = ``output_size(H, W)``.
    """

    def __init__(self, arch: str = 'ViT-B-16', pretrained: Optional[str] = None, seed: int = 0,
                 short_side: int = 448, tile_size: int = 224, tile_batch_size: int = 16,
                 normalize: bool = True, quick_gelu: Optional[bool] = None):
        super().__init__(CLIP_MEAN, CLIP_STD, normalize=normalize)
        self._init_clip(arch, pretrained, seed, quick_gelu)
        _check_dense_compatible(self.visual)
        self.short_side = self._check_multiple('short_side', short_side)
        self.tile_size = self._check_multiple('tile_size', tile_size)
        if tile_batch_size < 1:
            raise ValueError(f'tile_batch_size must be >= 1, got {tile_batch_size}.')
        self.tile_batch_size = int(tile_batch_size)

    def resized_size(self, height: int, width: int) -> Tuple[int, int]:
        """(H', W'): the size the image is resized to before tiling."""
        h, w = patch_aligned_size(height, width, self.short_side, self.patch_size)
        return max(h, self.tile_size), max(w, self.tile_size)

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        h, w = self.resized_size(height, width)
        return h // self.patch_size, w // self.patch_size

    def _tile_layout(self, height: int, width: int) -> List[TileSpec]:
        """Tiles covering a resized image of size (height, width) = ``resized_size(...)``."""
        p = self.patch_size
        layout = []
        for y0, r0, r1 in _axis_tiles(height, self.tile_size, p):
            for x0, c0, c1 in _axis_tiles(width, self.tile_size, p):
                dst = (y0 // p + r0, y0 // p + r1, x0 // p + c0, x0 // p + c1)
                layout.append(TileSpec(y0, x0, (r0, r1, c0, c1), dst))
        return layout

    def _encode(self, images: List[Tensor]) -> List[Tensor]:
        size, p = self.tile_size, self.patch_size
        outputs, jobs = [], []
        for index, image in enumerate(images):
            height, width = self.resized_size(*image.shape[-2:])
            resized = self.normalize_pixels(resize_image(image, (height, width)))
            outputs.append(resized.new_zeros(self.out_channels, height // p, width // p))
            for tile in self._tile_layout(height, width):
                crop = resized[:, tile.y0:tile.y0 + size, tile.x0:tile.x0 + size]
                jobs.append((index, tile, crop))

        grid = (size // p, size // p)
        for start in range(0, len(jobs), self.tile_batch_size):
            chunk = jobs[start:start + self.tile_batch_size]
            batch = torch.stack([crop for _, _, crop in chunk]).to(self._dtype)
            maps = _patch_grid(clip_tokens(self.visual, batch), grid).float()
            for (index, tile, _), feature_map in zip(chunk, maps):
                r0, r1, c0, c1 = tile.src
                d0, d1, e0, e1 = tile.dst
                outputs[index][:, d0:d1, e0:e1] = feature_map[:, r0:r1, c0:c1]
        return [self._finish(feature_map) for feature_map in outputs]

    def _geometry(self) -> Dict:
        return dict(short_side=self.short_side, tile_size=self.tile_size,
                    **self._clip_geometry(), **super()._geometry())


@MODELS.register_module()
class MaskCLIPDenseEncoder(_CLIPTower, DenseMemoryEncoder):
    """MaskCLIP dense features: the whole resized image in one pass, last block value-only.

    The image is resized so its short side is ``short_side`` and its long side a multiple
    of p (aspect ratio kept), the positional embedding is resampled bicubically to the token
    grid, and the last transformer block is replaced by ``out_proj(v_proj(ln_1(x)))``
    (no q/k attention, residual or MLP), followed by ``ln_post`` and ``proj``.

    Args:
        arch, pretrained, seed, quick_gelu: as in :class:`CLIPCLSEncoder`.
        short_side (int): short side of the resized image (multiple of p).
        normalize (bool): L2-normalise every feature vector.

    Output: list of (E, H'/p, W'/p) float32 maps, (H'/p, W'/p) = ``output_size(H, W)``.
    """

    def __init__(self, arch: str = 'ViT-B-16', pretrained: Optional[str] = None, seed: int = 0,
                 short_side: int = 448, normalize: bool = True,
                 quick_gelu: Optional[bool] = None):
        super().__init__(CLIP_MEAN, CLIP_STD, normalize=normalize)
        self._init_clip(arch, pretrained, seed, quick_gelu)
        _check_dense_compatible(self.visual, maskclip=True)
        self.short_side = self._check_multiple('short_side', short_side)

    def resized_size(self, height: int, width: int) -> Tuple[int, int]:
        """(H', W'): the size the image is resized to."""
        return patch_aligned_size(height, width, self.short_side, self.patch_size)

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        h, w = self.resized_size(height, width)
        return h // self.patch_size, w // self.patch_size

    def _encode(self, images: List[Tensor]) -> List[Tensor]:
        # images that resize to the same size share a forward pass
        groups = defaultdict(list)
        for index, image in enumerate(images):
            size = self.resized_size(*image.shape[-2:])
            groups[size].append((index, self.normalize_pixels(resize_image(image, size))))
        outputs: List[Optional[Tensor]] = [None] * len(images)
        for size, members in groups.items():
            batch = torch.stack([x for _, x in members]).to(self._dtype)
            tokens = clip_tokens(self.visual, batch, maskclip=True)
            maps = _patch_grid(tokens, (size[0] // self.patch_size, size[1] // self.patch_size))
            for (index, _), feature_map in zip(members, maps):
                outputs[index] = self._finish(feature_map)
        return outputs

    def _geometry(self) -> Dict:
        return dict(short_side=self.short_side, **self._clip_geometry(), **super()._geometry())
