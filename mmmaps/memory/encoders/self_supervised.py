"""Self-supervised pretraining of an open_clip visual tower: the CPU stand-in for CLIP.

CLIP's value to MAPS is that it was trained on far more images than the segmentation set
and embeds scenes so that similar scenes are near and different ones far apart. Real CLIP
weights are not reachable here, so :func:`pretrain_clip_visual` trains the same kind of
tower (an open_clip ``VisionTransformer``) with SimCLR's objective on *unlabelled* images:
two random views of every image (resized crop, flip, mild brightness/contrast) must be each
other's nearest neighbour among all views of the batch (NT-Xent). Instance discrimination
is used rather than DINO's self-distillation because it needs no teacher, no centring and
no multi-crop schedule, so it converges in a few hundred CPU steps; scene types emerge as
clusters because views of two images of the same scene type share most of their pixels'
statistics (stuff colour, texture, layout). The same function trains the max-pooled ConvNet
stand-in (:mod:`mmmaps.memory.encoders.convnet`), the tower that learns a small arbitrary
pattern from captions where the ViT does not.

Augmentations matter more than steps here (measured on the synthetic set, 400 labelled images
querying each other, scene-type mean average precision): without a per-channel tint jitter
the generator's random per-image tint is a shortcut to instance discrimination, and the key
space stops being organised by scene (mAP 0.58 after 300 steps, below the random-init tower's
0.96). With a +-25 tint offset per view it reaches 0.98 (crops >= 30 % of the image, temperature
0.2, 120 steps) and 1.00 (crops >= 50 %, temperature 0.5, the defaults). Hue jitter is left out:
colour is what tells a beach from a street, and CLIP's own training keeps colour too.

:func:`scene_retrieval_quality` measures what the memory gets out of an encoder: scene-type
precision@k of nearest-neighbour retrieval and the cosine similarity spread (top-1 neighbour
vs a random pair), the numbers that separate a useful key space from a collapsed one.
"""
import json
import math
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .weights import CLIP_MEAN, CLIP_STD, register_open_clip_configs, seeded_init

__all__ = ['IMAGE_SUFFIXES', 'list_images', 'load_image_pool', 'random_views', 'nt_xent_loss',
           'caption_loss', 'ProjectionHead', 'tower_image_size', 'build_open_clip_model',
           'pretrain_clip_visual', 'load_scene_labels', 'encode_image_files',
           'scene_retrieval_quality']

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def list_images(folder: str) -> List[str]:
    """Sorted paths of the image files directly inside ``folder``."""
    if not osp.isdir(folder):
        raise FileNotFoundError(f'Image pool folder not found: {folder}')
    files = sorted(osp.join(folder, name) for name in os.listdir(folder)
                   if name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise ValueError(f'No images ({", ".join(IMAGE_SUFFIXES)}) in {folder}')
    return files


def load_image_pool(files: Sequence[str], size: int) -> Tensor:
    """Load images as a (N, 3, size, size) uint8 RGB tensor: short side resized to ``size``
    (area interpolation), central square crop."""
    pool = np.empty((len(files), size, size, 3), np.uint8)
    for i, path in enumerate(files):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f'Cannot read image {path}')
        h, w = image.shape[:2]
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        top, left = (nh - size) // 2, (nw - size) // 2
        pool[i] = image[top:top + size, left:left + size, ::-1]
    return torch.from_numpy(pool).permute(0, 3, 1, 2).contiguous()


def random_views(images: Tensor, out_size: int, generator: torch.Generator,
                 scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), jitter: float = 0.2,
                 tint: float = 25.0) -> Tensor:
    """One random view per image, CLIP-normalised.

    Args:
        images: (B, 3, S, S) uint8.
        out_size: side of the views.
        generator: the only source of randomness (reproducible views).
        scale, ratio: area fraction and aspect range of the resized crop.
        jitter: brightness and contrast factors are drawn from [1 - jitter, 1 + jitter].
        tint: a per-channel offset drawn from [-tint, tint] (0-255 scale) is added.

    Returns:
        (B, 3, out_size, out_size) float32.
    """
    batch, _, height, width = images.shape
    u = torch.rand(batch, 6, generator=generator)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    crop_w = torch.sqrt(area * aspect).round().clamp(8, width).long()
    crop_h = torch.sqrt(area / aspect).round().clamp(8, height).long()
    views = []
    for i in range(batch):
        h, w = int(crop_h[i]), int(crop_w[i])
        top = int(u[i, 2] * (height - h + 1))
        left = int(u[i, 3] * (width - w + 1))
        crop = images[i:i + 1, :, top:top + h, left:left + w].float()
        view = F.interpolate(crop, size=(out_size, out_size), mode='bilinear',
                             align_corners=False, antialias=True)[0]
        if u[i, 4] < 0.5:
            view = view.flip(-1)
        views.append(view)
    views = torch.stack(views)
    factors = 1 + jitter * (2 * torch.rand(batch, 2, generator=generator) - 1)
    mean = views.mean(dim=(1, 2, 3), keepdim=True)
    views = (views - mean) * factors[:, 1, None, None, None] + mean  # contrast
    views = views * factors[:, 0, None, None, None]  # brightness
    offsets = tint * (2 * torch.rand(batch, 3, generator=generator) - 1)
    views = (views + offsets[:, :, None, None]).clamp(0, 255)
    pixel_mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    pixel_std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (views - pixel_mean) / pixel_std


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent: each of the 2B views must pick its partner among the other 2B-1.

    Args:
        z1, z2: (B, D) projections of the two views (normalised here).
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float('-inf'))
    batch = z1.shape[0]
    partner = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)])
    return F.cross_entropy(logits, partner)


def caption_loss(image_embeddings: Tensor, caption_embeddings: Tensor, captions: Tensor,
                 temperature: float) -> Tensor:
    """CLIP's image-to-text term where every image has one caption out of a fixed set: each
    image must pick its own caption among all of them (cosine / temperature, cross-entropy).

    Args:
        image_embeddings: (B, E) image embeddings (normalised here).
        caption_embeddings: (C, E) one embedding per caption (normalised here).
        captions: (B,) long, the caption of each image, in [0, C).
    """
    logits = F.normalize(image_embeddings, dim=1) @ F.normalize(caption_embeddings, dim=1).t()
    return F.cross_entropy(logits / temperature, captions)


class ProjectionHead(nn.Module):
    """SimCLR projection MLP used only during pretraining: (B, E) -> (B, out_dims)."""

    def __init__(self, in_dims: int, hidden_dims: int = 512, out_dims: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dims, hidden_dims), nn.GELU(),
                                 nn.Linear(hidden_dims, out_dims))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def tower_image_size(visual: nn.Module) -> int:
    """Input side of an open_clip visual tower (square inputs)."""
    size = visual.image_size
    return int(size[0]) if isinstance(size, (tuple, list)) else int(size)


def build_open_clip_model(arch: str, seed: int) -> nn.Module:
    """The full open_clip model (both towers) of ``arch``, randomly initialised from ``seed``.

    The text tower is kept (untrained) so the saved state dict loads through
    ``open_clip.create_model(arch, pretrained=FILE)`` exactly like a real CLIP checkpoint.
    """
    import open_clip
    register_open_clip_configs()
    with seeded_init(seed):
        return open_clip.create_model(arch)


def pretrain_clip_visual(visual: nn.Module, pool: Tensor, steps: int, batch_size: int,
                         seed: int, lr: float = 1e-3, weight_decay: float = 0.05,
                         temperature: float = 0.5, crop_scale=(0.5, 1.0), tint: float = 25.0,
                         warmup_steps: Optional[int] = None,
                         captions: Optional[Tensor] = None, caption_temperature: float = 0.1,
                         simclr_weight: float = 1.0,
                         log_every: int = 20, log=print) -> List[float]:
    """Train the image tower ``visual`` in place with NT-Xent on ``pool`` (plus, with
    ``captions``, CLIP's image-to-caption term); returns the loss per step.

    Deterministic for a seed (and a fixed number of torch threads): the projection head's
    init, the batches (a fresh permutation of the pool per epoch) and the views all come
    from generators seeded with ``seed``.

    Args:
        visual: the image tower: an open_clip ``model.visual`` or a
            :class:`~mmmaps.memory.encoders.convnet.MaxPoolConvNet` ((B, 3, S, S) ->
            (B, E); ``image_size`` and ``output_dim`` attributes).
        pool: (N, 3, S, S) uint8 unlabelled images.
        steps: optimisation steps.
        batch_size: images per step (2 views each).
        seed: seed of the head init, the batch order and the views.
        lr, weight_decay: AdamW; linear warm-up for ``warmup_steps`` (10 % by default),
            then cosine decay to 0.
        temperature: NT-Xent temperature.
        crop_scale, tint: view augmentation (:func:`random_views`).
        captions: (N,) long, one caption per pool image (e.g. its scene type), or None
            (self-supervised only). With captions a learned embedding per caption (the text
            tower in miniature, discarded after training) is added, and both views of each
            image must pick their caption (:func:`caption_loss`, ``caption_temperature``):
            what CLIP learns from text, for a stand-in that should know what the detector's
            few labels do not teach.
        simclr_weight: weight of the NT-Xent term; 0 trains the caption term alone (then
            ``captions`` are required and no projection head is trained).
    """
    image_size = tower_image_size(visual)
    if len(pool) < 2:
        raise ValueError(f'The image pool needs at least 2 images, got {len(pool)}')
    batch_size = min(batch_size, len(pool))
    if captions is not None and captions.shape != (len(pool),):
        raise ValueError(f'captions: one per pool image expected, shape ({len(pool)},), got '
                         f'{tuple(captions.shape)}')
    if simclr_weight < 0 or (simclr_weight == 0 and captions is None):
        raise ValueError(f'simclr_weight={simclr_weight}: must be > 0, or 0 with captions '
                         '(nothing would be trained)')
    with seeded_init(seed + 1):
        head = ProjectionHead(int(visual.output_dim))
        caption_table = None if captions is None else nn.Parameter(
            0.02 * torch.randn(int(captions.max()) + 1, int(visual.output_dim)))
    visual.train()
    for param in visual.parameters():
        param.requires_grad_(True)
    params = list(visual.parameters())
    if simclr_weight:
        params += list(head.parameters())
    if caption_table is not None:
        params.append(caption_table)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=weight_decay),
                                   dict(params=no_decay, weight_decay=0.0)], lr=lr)
    warmup = max(1, steps // 10) if warmup_steps is None else max(1, warmup_steps)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator().manual_seed(seed)
    order, cursor, losses = torch.randperm(len(pool), generator=generator), 0, []
    for step in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(pool), generator=generator), 0
        batch = order[cursor:cursor + batch_size]
        cursor += batch_size
        views = torch.cat([
            random_views(pool[batch], image_size, generator, scale=crop_scale, tint=tint)
            for _ in range(2)])
        embeddings = visual(views)
        loss = embeddings.new_zeros(())
        if simclr_weight:
            z = head(embeddings)
            loss = simclr_weight * nt_xent_loss(z[:len(batch)], z[len(batch):], temperature)
        if caption_table is not None:
            loss = loss + caption_loss(embeddings, caption_table, captions[batch].repeat(2),
                                       caption_temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss))
        if log is not None and (step % log_every == 0 or step == steps - 1):
            log(f'step {step + 1}/{steps}  loss {losses[-1]:.4f}  '
                f'lr {scheduler.get_last_lr()[0]:.2e}')
    visual.eval()
    for param in visual.parameters():
        param.requires_grad_(False)
    return losses


def load_scene_labels(ann_file: str, image_dir: str):
    """(image paths, scene types) of a COCO file whose images carry a ``scene`` field."""
    with open(ann_file) as f:
        images = json.load(f)['images']
    missing = [im.get('file_name') for im in images if 'scene' not in im]
    if missing:
        raise KeyError(f'{ann_file}: images without a `scene` field (e.g. {missing[0]}); '
                       'scene-retrieval quality needs the scene type of every image')
    return [osp.join(image_dir, im['file_name']) for im in images], [im['scene'] for im in images]


def encode_image_files(encoder_cfg: dict, files: Sequence[str]) -> Tensor:
    """(N, E) keys of the image files as the memory builder computes them: each image at
    its own size, the encoder's preprocessing."""
    import mmcv
    from mmmaps.memory.encoders import build_memory_encoder
    encoder = build_memory_encoder(encoder_cfg)
    keys = []
    with torch.no_grad():
        for start in range(0, len(files), 64):
            images = [torch.from_numpy(mmcv.imread(path, channel_order='rgb')).permute(2, 0, 1)
                      .float() for path in files[start:start + 64]]
            keys.append(encoder(images))
    return torch.cat(keys)


def scene_retrieval_quality(keys: Tensor, labels: Sequence, k: int = 5,
                            seed: int = 0) -> Dict[str, float]:
    """How well a key space retrieves images of the query's scene type.

    Every image queries all others (itself excluded) by cosine similarity.

    Args:
        keys: (N, E) image embeddings (normalised here).
        labels: N scene-type labels.
        k: neighbours per query.
        seed: seed of the random pairs.

    Returns:
        dict with ``precision_at_k`` (fraction of the k neighbours sharing the query's
        label), ``chance`` (the same for k random other images, in expectation),
        ``mean_average_precision`` (of the full ranking: is the whole key space organised by
        scene type, not only the first few neighbours), ``top1_similarity`` and
        ``kth_similarity`` (mean cosine of the 1st / k-th neighbour),
        ``random_pair_similarity`` (mean cosine of random distinct pairs) and ``spread``
        (top-1 minus random pair).
    """
    keys = F.normalize(keys.float(), dim=1)
    n = keys.shape[0]
    if n <= k:
        raise ValueError(f'Need more than k={k} images, got {n}')
    labels = np.asarray(labels)
    sims = keys @ keys.t()
    sims.fill_diagonal_(float('-inf'))
    ranked = sims.sort(dim=1, descending=True)
    order = ranked.indices[:, :n - 1].numpy()  # the query itself (-inf) comes last
    relevant = labels[order] == labels[:, None]
    ranks = np.arange(1, n)
    precision_at_hits = np.cumsum(relevant, axis=1) / ranks
    hits = relevant.sum(axis=1)
    ap = np.where(hits > 0, (precision_at_hits * relevant).sum(axis=1) / np.maximum(hits, 1), 0)
    _, counts = np.unique(labels, return_counts=True)
    chance = float(((counts * (counts - 1)).sum()) / (n * (n - 1)))
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, size=20000)
    b = (a + rng.integers(1, n, size=20000)) % n
    random_pairs = (keys[torch.from_numpy(a)] * keys[torch.from_numpy(b)]).sum(1)
    top1 = float(ranked.values[:, 0].mean())
    rand = float(random_pairs.mean())
    return dict(precision_at_k=float(relevant[:, :k].mean()), chance=chance, k=k,
                mean_average_precision=float(ap.mean()), top1_similarity=top1,
                kth_similarity=float(ranked.values[:, k - 1].mean()),
                random_pair_similarity=rand, spread=top1 - rand, num_images=n)
