"""Train a model (mmdet conventions): ``python tools/train.py CONFIG [--work-dir DIR]``.

Before the run starts: the model's class counts are compared with the dataset's
(:func:`mmmaps.datasets.preflight.check_class_counts`), and the train split (and the val
split with a val loop) must pass the dataset check of ``tools/analysis/check_dataset.py``
(cached per dataset content; ``--skip-invalid-images`` leaves the bad training images out,
listed in ``WORK_DIR/train_dataloader.dataset.invalid_images.json``). Checkpoints
(``load_from``, ``--resume``) must fit the model (:class:`mmmaps.engine.MMMapsRunner`).
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../..'))  # noqa (this checkout first)

import argparse

from mmengine.registry import RUNNERS

from mmmaps.utils.tool_utils import load_tool_config, parse_launch_args, tool_errors


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true',
                        help='enable automatic-mixed-precision training (CUDA)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the LR by total batch size / auto_scale_lr.base_batch_size')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint, or from the latest one in the work dir if no path '
        'is given')
    parser.add_argument(
        '--skip-invalid-images', action='store_true',
        help='train without the images that fail the dataset check (listed in '
        'WORK_DIR/train_dataloader.dataset.invalid_images.json) instead of stopping with an '
        'error')
    return parse_launch_args(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_tool_config(args.config, args.cfg_options, args.work_dir, args.launcher)

    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise RuntimeError(f'{args.config} has no auto_scale_lr.base_batch_size; '
                               'add auto_scale_lr = dict(enable=False, base_batch_size=N)')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    from mmmaps.datasets.preflight import check_class_counts, check_run_datasets
    from mmmaps.engine import MMMapsRunner
    check_class_counts(cfg, 'train')
    checked = []  # logged once the run's logger (and its log file) exists
    check_run_datasets(cfg, skip_invalid=args.skip_invalid_images, work_dir=cfg.work_dir,
                       log=checked.append)
    runner = MMMapsRunner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    for message in checked:
        runner.logger.info(f'dataset check: {message}')
    runner.train()


if __name__ == '__main__':
    try:
        main()
    except tool_errors() as exc:
        sys.exit(f'train.py: error: {exc}')
