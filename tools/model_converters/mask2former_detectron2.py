"""Convert a detectron2 Mask2Former checkpoint (the Mask2Former model zoo) to mmdet/mmmaps.

    python tools/model_converters/mask2former_detectron2.py IN.pkl OUT.pth \
        [--dataset coco|ade20k|cityscapes|none] [--config CONFIG] [--force]

IN.pkl: a ResNet (R50/R101) Mask2Former of facebookresearch/Mask2Former's model zoo, e.g.
the ADE20K panoptic model_final_5c90d4.pkl, read with a restricted unpickler (numpy arrays
and plain data only). Every key is mapped explicitly; an unmapped key, a model tensor left
without a value or a differing shape is refused by name. ``--dataset`` (default: read from
the classifier's size) puts the classifier's rows in mmmaps' class order (things first);
``none`` keeps the order (with ``--config`` for your own model). OUT.pth: a weights-only
mmdet ``Mask2Former`` checkpoint (the MAPS-only memory layers are not in it), e.g. for
``load_from`` of configs/maps/*_from-mask2former.py; its meta names the source's sha256.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../../..'))  # noqa (this checkout first)

import argparse


def parse_args(argv=None):
    from mmmaps.converters.mask2former_detectron2 import NUM_CLASSES
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='detectron2 checkpoint (.pkl, or .pth)')
    parser.add_argument('dst', help='the mmdet checkpoint to write (.pth)')
    parser.add_argument('--dataset', choices=sorted(NUM_CLASSES) + ['none'],
                        help="class order of the checkpoint (default: from the classifier's "
                        'size; a given one must agree)')
    parser.add_argument('--config', help='the model the result must fill (default: the MAPS '
                        'fine-tune config of the dataset; its memory layers are not filled)')
    parser.add_argument('--force', action='store_true',
                        help='replace DST if it is a checkpoint an mmmaps converter wrote')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmmaps.converters import ConversionError
    from mmmaps.converters.mask2former_detectron2 import convert
    from mmmaps.utils.checkpoint_loading import (UnreadableCheckpointError,
                                                 UntrustedCheckpointError)
    try:
        meta = convert(args.src, args.dst, dataset=args.dataset, config=args.config,
                       force=args.force)
    except (ConversionError, FileNotFoundError, UnreadableCheckpointError,
            UntrustedCheckpointError) as err:
        print(f'mask2former_detectron2.py: error: {err}', file=sys.stderr)
        return 1
    print(f"converted {meta['num_tensors']} tensors of {args.src} (dataset "
          f"{meta['dataset']}, classes {meta['class_order']}, sha256 "
          f"{meta['source_sha256'][:12]}...) for {meta['config']} -> {args.dst}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
