"""Drawing helpers of the demo and the retrieval viewer: panoptic overlays (mmdet's
``DetLocalVisualizer``), captioned image tiles, grids and an atomic PNG writer.

Images are RGB uint8 (H, W, 3) throughout; only :func:`write_png_atomic` converts to BGR.
"""
import itertools
import os
import os.path as osp
import tempfile
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

BACKGROUND = (255, 255, 255)
CAPTION_BG = (32, 32, 32)
CAPTION_FG = (255, 255, 255)
_names = itertools.count()


def read_rgb(path: str, what: str = 'image') -> np.ndarray:
    """An image file as RGB uint8; FileNotFoundError naming ``what`` and the path."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'{what} {path} does not exist')
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f'{what} {path} is not a readable image')
    return np.ascontiguousarray(image[..., ::-1])


def write_png_atomic(path: str, image_rgb: np.ndarray) -> str:
    """Write a PNG through a temporary file in the same folder, then rename it."""
    path = osp.abspath(path)
    folder = osp.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', suffix='.png', dir=folder)
    os.close(fd)
    try:
        if not cv2.imwrite(tmp, np.ascontiguousarray(image_rgb[..., ::-1])):
            raise OSError(f'could not write {path}')
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    return path


# ---------------------------------------------------------------------- panoptic overlay
def num_panoptic_segments(sample, num_classes: int) -> int:
    """Non-void segments of ``sample.pred_panoptic_seg`` (0 when it has none)."""
    if 'pred_panoptic_seg' not in sample:
        return 0
    ids = np.unique(sample.pred_panoptic_seg.sem_seg[0].cpu().numpy())
    return int(np.sum(ids % _instance_offset() != num_classes))


def _instance_offset() -> int:
    from mmdet.evaluation.functional import INSTANCE_OFFSET
    return INSTANCE_OFFSET


def panoptic_segments(sample, classes: Sequence[str]) -> list:
    """``[(class name, instance, area in pixels)]`` of the predicted panoptic map,
    largest first (void excluded)."""
    if 'pred_panoptic_seg' not in sample:
        return []
    pan = sample.pred_panoptic_seg.sem_seg[0].cpu().numpy()
    ids, areas = np.unique(pan, return_counts=True)
    offset = _instance_offset()
    out = [(classes[i % offset], int(i // offset), int(a)) for i, a in zip(ids, areas)
           if i % offset != len(classes)]
    return sorted(out, key=lambda s: -s[2])


def draw_panoptic(image: np.ndarray, sample, dataset_meta: dict, score_thr: float = 0.3,
                  draw_boxes: bool = True) -> np.ndarray:
    """The predicted panoptic segmentation over ``image`` with class names, drawn by
    mmdet's ``DetLocalVisualizer``; plus the boxes (class: score) of thing detections
    scoring above ``score_thr`` when the model returns instances and ``draw_boxes``.

    The instances' masks are not drawn: the panoptic map already shows them. An empty
    panoptic map (everything void, e.g. an untrained model) leaves the image as it is.
    """
    from mmdet.visualization import DetLocalVisualizer

    sample = sample.cpu().clone()
    classes = dataset_meta.get('classes')
    if classes is None:
        raise ValueError('dataset_meta has no classes')
    if 'pred_panoptic_seg' in sample and not num_panoptic_segments(sample, len(classes)):
        del sample.pred_panoptic_seg  # DetLocalVisualizer cannot draw an all-void map
    if 'pred_instances' in sample:
        instances = sample.pred_instances
        if draw_boxes and 'bboxes' in instances:
            trimmed = type(instances)(metainfo=instances.metainfo)
            for key in ('bboxes', 'labels', 'scores'):
                if key in instances:
                    trimmed.set_field(getattr(instances, key), key)
            sample.pred_instances = trimmed
        else:
            del sample.pred_instances
    visualizer = DetLocalVisualizer(name=f'mmmaps_vis_{next(_names)}')
    visualizer.dataset_meta = dataset_meta
    visualizer.add_datasample('image', image, data_sample=sample, draw_gt=False,
                              draw_pred=True, pred_score_thr=score_thr)
    return np.ascontiguousarray(visualizer.get_image())


# ---------------------------------------------------------------------- tiles and grids
def _fit_text(text: str, width: int, scale: float, thickness: int) -> Tuple[str, float]:
    """Shrink the font, then cut the text, until it fits ``width`` pixels."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    while scale > 0.3 and cv2.getTextSize(text, font, scale, thickness)[0][0] > width:
        scale *= 0.9
    while len(text) > 1 and cv2.getTextSize(text, font, scale, thickness)[0][0] > width:
        text = text[:-2] + '~'
    return text, scale


def caption_height(width: int, num_lines: int) -> int:
    line = max(12, min(24, width // 8))
    return num_lines * line + 6


def add_caption(image: np.ndarray, lines: Sequence[str], num_lines: Optional[int] = None
                ) -> np.ndarray:
    """``image`` with a dark strip of ``num_lines`` text lines underneath."""
    num_lines = max(len(lines), num_lines or 0)
    width = image.shape[1]
    height = caption_height(width, num_lines)
    strip = np.empty((height, width, 3), np.uint8)
    strip[:] = CAPTION_BG
    line_h = (height - 6) // max(num_lines, 1)
    for i, line in enumerate(lines):
        text, scale = _fit_text(str(line), width - 6, line_h / 30.0, 1)
        cv2.putText(strip, text, (3, 3 + (i + 1) * line_h - max(2, line_h // 5)),
                    cv2.FONT_HERSHEY_SIMPLEX, scale, CAPTION_FG, 1, cv2.LINE_AA)
    return np.concatenate([image, strip], axis=0)


def resize_to_height(image: np.ndarray, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    width = max(1, int(round(w * height / h)))
    interp = cv2.INTER_AREA if height < h else cv2.INTER_NEAREST
    return cv2.resize(image, (width, height), interpolation=interp)


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` scaled to fit a ``size`` x ``size`` square (aspect kept), centred on white."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    out = np.empty((size, size, 3), np.uint8)
    out[:] = BACKGROUND
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out


def tile(image: np.ndarray, size: int, lines: Sequence[str], num_lines: int = 2,
         border: int = 2) -> np.ndarray:
    """A grid cell: ``image`` letterboxed to ``size``, a caption, a white border."""
    cell = add_caption(letterbox(image, size), lines, num_lines)
    return cv2.copyMakeBorder(cell, border, border, border, border, cv2.BORDER_CONSTANT,
                              value=BACKGROUND)


def hstack(images: Sequence[np.ndarray], gap: int = 0) -> np.ndarray:
    """Side by side, top-aligned, shorter ones padded with white."""
    height = max(im.shape[0] for im in images)
    parts = []
    for i, im in enumerate(images):
        if i and gap:
            parts.append(np.full((height, gap, 3), 255, np.uint8))
        parts.append(cv2.copyMakeBorder(im, 0, height - im.shape[0], 0, 0,
                                        cv2.BORDER_CONSTANT, value=BACKGROUND))
    return np.concatenate(parts, axis=1)


def retrieval_panel(overlay: np.ndarray, image_name: str, result: Sequence[Tuple[int, float]],
                    images, min_height: int = 160) -> np.ndarray:
    """The overlay followed by the retrieved scenes, each with a caption
    (``--show-retrievals`` of ``demo/image_demo.py`` and ``tools/deployment/onnx_demo.py``).

    ``result`` is ``[(image id, similarity)]`` in rank order; ``images`` a
    :class:`~mmmaps.apis.BankImages` of the memory they come from."""
    height = max(overlay.shape[0], min_height)
    tiles = [add_caption(resize_to_height(overlay, height),
                         [image_name, f'prediction, {len(result)} retrieved'], 2)]
    for rank, (image_id, score) in enumerate(result):
        tiles.append(add_caption(resize_to_height(images.read(image_id), height),
                                 [f'#{rank + 1} id {image_id}', f'sim {score:.3f}'], 2))
    return hstack(tiles, gap=4)


def vstack(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Rows stacked, narrower ones padded with white on the right."""
    width = max(r.shape[1] for r in rows)
    return np.concatenate([cv2.copyMakeBorder(r, 0, 0, 0, width - r.shape[1],
                                              cv2.BORDER_CONSTANT, value=BACKGROUND)
                           for r in rows], axis=0)


def draw_box(image: np.ndarray, bbox_xywh: Sequence[float], color=(255, 0, 0),
             thickness: Optional[int] = None) -> np.ndarray:
    """A copy of ``image`` with an (x, y, w, h) rectangle."""
    out = image.copy()
    x, y, w, h = (int(round(v)) for v in bbox_xywh)
    t = thickness or max(1, min(out.shape[:2]) // 100)
    cv2.rectangle(out, (x, y), (x + max(w, 1) - 1, y + max(h, 1) - 1), color, t)
    return out


def tint_mask(image: np.ndarray, mask: np.ndarray, color=(255, 0, 0),
              alpha: float = 0.45) -> np.ndarray:
    """A copy of ``image`` with ``mask`` blended towards ``color``."""
    out = image.astype(np.float32)
    out[mask] = out[mask] * (1 - alpha) + np.asarray(color, np.float32) * alpha
    return out.clip(0, 255).astype(np.uint8)


def crop_box(image: np.ndarray, bbox_xywh: Sequence[float], margin: float = 0.1
             ) -> np.ndarray:
    """The (x, y, w, h) box of ``image`` grown by ``margin`` of its size on each side."""
    x, y, w, h = bbox_xywh
    mx, my = w * margin, h * margin
    height, width = image.shape[:2]
    x0, y0 = max(0, int(np.floor(x - mx))), max(0, int(np.floor(y - my)))
    x1 = min(width, int(np.ceil(x + w + mx)))
    y1 = min(height, int(np.ceil(y + h + my)))
    if x1 <= x0 or y1 <= y0:
        return image
    return image[y0:y1, x0:x1]
