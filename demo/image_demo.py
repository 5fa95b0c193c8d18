"""Panoptic segmentation of one image with a Mask2Former, MAPS or Panoptic SegFormer config.

    python demo/image_demo.py IMG CONFIG CHECKPOINT --out-file out.png \
        [--device cpu] [--score-thr 0.3] [--show-retrievals] [--cfg-options k=v ...]

The image goes through the config's test pipeline and the model with mmdet's inference
API (``init_detector`` / ``inference_detector``); the panoptic prediction is drawn with
class names by mmdet's ``DetLocalVisualizer`` (classes and palette of the config's test
dataset), with the boxes and scores of the thing detections above ``--score-thr``.

A MAPS config loads its memory (``memory.root``) exactly as ``MemoryHook`` does in
``tools/test.py``, with the same checks. ``--show-retrievals`` (MAPS only) puts the k
scenes the model retrieved for this image beside the overlay, with their similarity
scores; their files come from the bank's manifest and the config's train dataset
(``data_root`` + ``data_prefix.img``).
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse
import os.path as osp
import sys

from mmengine.config import Config, DictAction

from mmmaps.apis.demo import DemoError, add_demo_output_arguments


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('img', help='image file')
    parser.add_argument('config', help='model config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    add_demo_output_arguments(parser)
    parser.add_argument('--device', default=None,
                        help='device, e.g. cpu or cuda:0 (default: cuda:0 when available)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy format '
                        '(e.g. memory.root=DIR)')
    return parser.parse_args(argv)


def _check_inputs(args) -> None:
    for what, path in (('image', args.img), ('config', args.config),
                       ('checkpoint', args.checkpoint)):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} {path} does not exist')


def _model_type(cfg) -> str:
    return str(cfg.model.get('type', '?')).rpartition('.')[2]


def main(argv=None):
    args = parse_args(argv)
    _check_inputs(args)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)

    import torch

    from mmmaps.apis import (inference_panoptic, init_panoptic_model, uses_memory,
                             write_demo_output)
    if args.show_retrievals and not (uses_memory(cfg) or _model_type(cfg) == 'MAPS'):
        raise DemoError(f'--show-retrievals needs a MAPS config (a model that retrieves from a '
                        f'memory); {args.config} builds a {_model_type(cfg)}')
    device = args.device or ('cuda:0' if torch.cuda.is_available() else 'cpu')
    model = init_panoptic_model(cfg, args.checkpoint, device=device)
    if args.show_retrievals and getattr(model, 'memory', None) is None:
        raise DemoError(f'--show-retrievals: the {type(model).__name__} of {args.config} has no '
                        'memory')
    sample = inference_panoptic(model, args.img)
    return write_demo_output(args.img, sample, model.dataset_meta, args.out_file,
                             score_thr=args.score_thr, draw_boxes=not args.no_boxes,
                             show_retrievals=args.show_retrievals, cfg=model.cfg,
                             memory=getattr(model, 'memory', None))


if __name__ == '__main__':
    from mmmaps.utils.tool_utils import tool_errors
    try:
        main()
    except (DemoError, ) + tool_errors() as exc:
        sys.exit(f'image_demo.py: error: {exc}')
