"""Convert a released Panoptic SegFormer checkpoint of the authors to mmmaps.

    python tools/model_converters/panoptic_segformer_official.py IN.pth OUT.pth \
        [--variant r50|r101|swin-l|pvtv2-b5] [--config CONFIG] [--force]

IN.pth: one of the COCO checkpoints of zhiqi-li/Panoptic-SegFormer (releases/download/v1.0),
read weights-only. Every key is mapped explicitly; a key that does not map, a model tensor
left without a value, or a differing shape is refused by name. OUT.pth: a weights-only
checkpoint for the release config of the variant (``--config`` for another), whose meta
names the source file and its sha256. Then:

    python tools/test.py configs/panoptic_segformer/panoptic-segformer-release_r50_8xb1-24e_coco-panoptic.py OUT.pth
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../../..'))  # noqa (this checkout first)

import argparse


def parse_args(argv=None):
    from mmmaps.converters.panoptic_segformer_official import VARIANTS
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help="the authors' checkpoint (.pth)")
    parser.add_argument('dst', help='the mmmaps checkpoint to write (.pth)')
    parser.add_argument('--variant', choices=sorted(VARIANTS),
                        help='backbone of the checkpoint (default: read from its keys; a '
                        'given one must agree)')
    parser.add_argument('--config', help="the model the result must fill exactly (default: "
                        "the variant's release config)")
    parser.add_argument('--force', action='store_true',
                        help='replace DST if it is a checkpoint an mmmaps converter wrote')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmmaps.converters import ConversionError
    from mmmaps.converters.panoptic_segformer_official import convert
    from mmmaps.utils.checkpoint_loading import (UnreadableCheckpointError,
                                                 UntrustedCheckpointError)
    try:
        meta = convert(args.src, args.dst, variant=args.variant, config=args.config,
                       force=args.force)
    except (ConversionError, FileNotFoundError, UnreadableCheckpointError,
            UntrustedCheckpointError) as err:
        print(f'panoptic_segformer_official.py: error: {err}', file=sys.stderr)
        return 1
    print(f"converted {meta['num_tensors']} tensors of {args.src} ({meta['variant']}, sha256 "
          f"{meta['source_sha256'][:12]}...) for {meta['config']} -> {args.dst}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
