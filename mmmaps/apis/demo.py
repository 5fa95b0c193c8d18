"""What the image demos print and draw for one prediction (``demo/image_demo.py`` with a
checkpoint, ``tools/deployment/onnx_demo.py`` with an ONNX export)."""
import os.path as osp
from typing import Optional

import numpy as np

from .retrievals import BankImages
from .visualization import (draw_panoptic, panoptic_segments, read_rgb, retrieval_panel,
                            write_png_atomic)


class DemoError(ValueError):
    """A usage error the demos report without a traceback."""


def add_demo_output_arguments(parser) -> None:
    """The options of :func:`write_demo_output` that both demos take."""
    parser.add_argument('--out-file', required=True, help='output PNG')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw the boxes of thing detections scoring above this')
    parser.add_argument('--no-boxes', action='store_true',
                        help='draw only the panoptic segmentation, no detection boxes')
    parser.add_argument('--show-retrievals', action='store_true',
                        help='MAPS: show the retrieved scene images and their scores')


def write_demo_output(img_path: str, sample, dataset_meta: dict, out_file: str,
                      score_thr: float = 0.3, draw_boxes: bool = True,
                      show_retrievals: bool = False, cfg=None, memory=None) -> np.ndarray:
    """Draw ``sample``'s panoptic prediction on the image (with thing boxes above
    ``score_thr``), print its segments, and with ``show_retrievals`` (MAPS: ``cfg`` and
    ``memory`` given) print and draw the retrieved scenes beside it; write ``out_file``
    atomically. Returns the written RGB image (H, W, 3)."""
    image = read_rgb(img_path, 'image')
    overlay = draw_panoptic(image, sample, dataset_meta, score_thr=score_thr,
                            draw_boxes=draw_boxes)
    segments = panoptic_segments(sample, dataset_meta['classes'])
    print(f'{img_path}: {len(segments)} panoptic segments' +
          (': ' + ', '.join(f'{name} ({area} px)' for name, _, area in segments[:12])
           if segments else ' (everything void)'))
    out = overlay
    if show_retrievals:
        out = _with_retrievals(overlay, img_path, sample, cfg, memory)
    write_png_atomic(out_file, out)
    print(f'wrote {out_file} ({out.shape[1]}x{out.shape[0]})')
    return out


def _with_retrievals(overlay: np.ndarray, img_path: str, sample, cfg,
                     memory: Optional[object]) -> np.ndarray:
    retrieval = sample.metainfo.get('retrieval')
    if retrieval is None or memory is None:
        raise DemoError('the model retrieved nothing for this image (its head reads no '
                        'memory: use_scene_memory/use_object_memory are off)')
    images = BankImages(cfg, memory.root)
    found = [(int(i), float(s)) for i, s in zip(retrieval.image_ids[0].tolist(),
                                                retrieval.scores[0].tolist()) if i >= 0]
    print(f'retrieved {len(found)} scenes from {memory.root.root}:')
    for rank, (image_id, score) in enumerate(found):
        print(f'  #{rank + 1}  id {image_id:<8d} similarity {score:.4f}  '
              f'{images.path(image_id)}')
    if memory.self_retrievals(retrieval, [img_path])[0]:
        print(f'note: {img_path} is in the memory (same file content); it retrieves itself')
    return retrieval_panel(overlay, osp.basename(img_path), found, images)
