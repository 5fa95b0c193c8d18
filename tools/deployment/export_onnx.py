"""Export a trained Mask2Former, MAPS or Panoptic SegFormer to ONNX.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT --out DIR \
        [--shape H W] [--dynamic] [--opset 17] [--deformable-attention KIND] \
        [--force] [--cfg-options k=v ...]

DIR receives ``model.onnx`` (normalised, padded image -> per-query class logits and mask
logits, the fusion head's inputs; MAPS takes the retrieved memory as inputs), for MAPS
``key_encoder.onnx`` (0-255 crops -> L2-normalised keys), the config and ``deploy.json``
(checkpoint sha256, inputs/outputs, opset, memory spec, verification). The export is
checked with onnx's checker and compared with PyTorch in onnxruntime before DIR is
published (max |difference| <= --tolerance, else nothing is written). Multi-scale
deformable attention is exported as Gather ops by default (faster in onnxruntime than
mmcv's GridSample path, and no GridSample for TensorRT); ``--deformable-attention
grid_sample`` keeps mmcv's path; ``--deformable-attention mmdeploy`` emits one
``mmdeploy::MMCVMultiScaleDeformableAttention`` node per attention layer for a TensorRT
engine built with mmdeploy's plugin (onnxruntime cannot run it: not verified here, and the
onnxruntime runtime refuses the folder; docs/en/user_guides/deployment.md, "TensorRT").

Run it with ``tools/test.py CONFIG DIR --backend onnxruntime`` or
``tools/deployment/onnx_demo.py IMG DIR``. Needs ``pip install -r requirements/deploy.txt``.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../../..'))  # noqa (this checkout first)

import argparse

from mmengine.config import DictAction


def parse_args(argv=None):
    from mmmaps.deployment.deformable_attention import DEFORMABLE_ATTENTION_KINDS
    from mmmaps.deployment.export import DEFORMABLE_ATTENTION, OPSET, TOLERANCE
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='model config file')
    parser.add_argument('checkpoint', help='checkpoint file of that config')
    parser.add_argument('--out', required=True, help='export folder to write')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='padded input size of the graph (default: the test Resize '
                        'scale\'s long side squared, rounded up to pad_size_divisor)')
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch, height and width (Mask2Former and MAPS)')
    parser.add_argument('--opset', type=int, default=OPSET,
                        help=f'ONNX opset (default {OPSET}; >= 16 for GridSample)')
    parser.add_argument('--tolerance', type=float, default=TOLERANCE,
                        help='largest max |PyTorch - onnxruntime| accepted on the '
                        f'verification inputs (default {TOLERANCE})')
    parser.add_argument('--deformable-attention', choices=DEFORMABLE_ATTENTION_KINDS,
                        default=DEFORMABLE_ATTENTION,
                        help='how the graph computes multi-scale deformable attention: '
                        'Gather ops, one GridSample per level (mmcv\'s CPU path), or one node '
                        'of mmdeploy\'s TensorRT plugin op per layer (not runnable by '
                        f'onnxruntime); default {DEFORMABLE_ATTENTION}')
    parser.add_argument('--force', action='store_true',
                        help='replace DIR if it holds an earlier export')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy format')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mmmaps.deployment import export_onnx
    return export_onnx(args.config, args.checkpoint, args.out,
                       shape=tuple(args.shape) if args.shape else None, dynamic=args.dynamic,
                       opset=args.opset, force=args.force, cfg_options=args.cfg_options,
                       tolerance=args.tolerance,
                       deformable_attention=args.deformable_attention)


if __name__ == '__main__':
    from mmmaps.deployment.errors import CheckpointMismatchError, DeploymentError
    from mmmaps.memory.storage import MemoryBankError
    from mmmaps.utils.checkpoint_loading import UnreadableCheckpointError
    from mmmaps.utils.output_dirs import OutputOwnershipError
    try:
        main()
    except (CheckpointMismatchError, DeploymentError, FileNotFoundError, ImportError,
            MemoryBankError, OutputOwnershipError, UnreadableCheckpointError) as exc:
        sys.exit(f'export_onnx.py: error: {exc}')
