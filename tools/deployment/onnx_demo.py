"""Panoptic segmentation of one image with an ONNX export (onnxruntime, no model built).

    python tools/deployment/onnx_demo.py IMG EXPORT_DIR --out-file out.png \
        [--memory DIR] [--score-thr 0.3] [--no-boxes] [--show-retrievals] [--threads N] \
        [--cfg-options k=v ...]

The ONNX twin of ``demo/image_demo.py``: EXPORT_DIR is a folder written by
``tools/deployment/export_onnx.py``; its ``config.py`` gives the test pipeline, the data
preprocessor, the fusion head and the classes and palette; ``model.onnx`` runs in
onnxruntime (:class:`mmmaps.deployment.ONNXPanopticPredictor`). No detector is built and
no checkpoint is read. The drawing and the printed summary are those of the demo: the
panoptic prediction with class names (mmdet's ``DetLocalVisualizer``) and the boxes and
scores of the thing detections above ``--score-thr``.

A MAPS export loads the memory of the exported config's ``memory.root`` (or ``--memory
DIR``, a deliberate swap) with the exported key encoder, checked against the memory the
checkpoint was trained with as ``tools/test.py`` does. ``--show-retrievals`` (MAPS only)
puts the k scenes retrieved for this image beside the overlay, with their similarity
scores. ``--cfg-options`` overrides the exported config's post-processing (e.g.
``model.test_cfg.iou_thr=0.5``); a change of the network itself is refused (export again).
Needs ``pip install -r requirements/deploy.txt``.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../../..'))  # noqa (this checkout first)

import argparse
import os.path as osp

from mmengine.config import DictAction

from mmmaps.apis.demo import DemoError, add_demo_output_arguments


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('img', help='image file')
    parser.add_argument('export_dir', help='folder written by tools/deployment/export_onnx.py')
    add_demo_output_arguments(parser)
    parser.add_argument('--memory', default=None, metavar='DIR',
                        help='MAPS: memory directory (default: memory.root of the exported '
                        'config)')
    parser.add_argument('--threads', type=int, default=None, metavar='N',
                        help='onnxruntime intra-op threads (default: all cores)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the exported config, xxx=yyy format '
                        '(post-processing, e.g. model.test_cfg.iou_thr=0.5)')
    return parser.parse_args(argv)


def _check_inputs(args) -> None:
    if not osp.isfile(args.img):
        raise FileNotFoundError(f'image {args.img} does not exist')
    if not osp.isdir(args.export_dir):
        raise FileNotFoundError(f'export folder {args.export_dir} does not exist')
    if args.threads is not None and args.threads < 1:
        raise DemoError(f'--threads {args.threads}: must be at least 1')


def main(argv=None):
    args = parse_args(argv)
    _check_inputs(args)

    from mmmaps.apis import write_demo_output
    from mmmaps.deployment import ONNXPanopticPredictor, read_export
    info = read_export(args.export_dir)  # DeploymentError naming the folder if not an export
    if args.show_retrievals and info.get('family') != 'maps':
        raise DemoError(f'--show-retrievals needs a MAPS export (a model that retrieves from '
                        f'a memory); {args.export_dir} is a {info.get("family")} export')
    if args.memory is not None and info.get('family') != 'maps':
        raise DemoError(f'--memory: {args.export_dir} is a {info.get("family")} export; it '
                        'reads no memory')
    predictor = ONNXPanopticPredictor(args.export_dir, memory_root=args.memory,
                                      cfg_options=args.cfg_options, num_threads=args.threads)
    if args.show_retrievals and predictor.memory is None:
        raise DemoError(f'--show-retrievals: the MAPS export {args.export_dir} reads no memory '
                        '(use_scene_memory/use_object_memory are off)')
    sample = predictor(args.img)
    return write_demo_output(args.img, sample, predictor.dataset_meta, args.out_file,
                             score_thr=args.score_thr, draw_boxes=not args.no_boxes,
                             show_retrievals=args.show_retrievals, cfg=predictor.cfg,
                             memory=predictor.memory)


if __name__ == '__main__':
    from mmmaps.deployment.errors import DeploymentError
    from mmmaps.memory.storage import MemoryBankError
    try:
        main()
    except (DemoError, DeploymentError, FileNotFoundError, ImportError,
            MemoryBankError) as exc:
        sys.exit(f'onnx_demo.py: error: {exc}')
