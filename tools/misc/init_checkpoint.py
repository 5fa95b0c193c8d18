"""Save the randomly initialised weights of a config as a checkpoint.

The untrained reference of the main job: ``tools/test.py CONFIG init.pth`` then
scores a model that has seen no data, built exactly as training would build it.

    python tools/misc/init_checkpoint.py CONFIG OUT.pth [--seed 0]
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../../..'))  # noqa (this checkout first)

import argparse
import os
import os.path as osp

import torch
from mmengine.config import Config
from mmengine.runner import save_checkpoint

from mmdet.registry import MODELS
from mmdet.utils import register_all_modules


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('out')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    cfg = Config.fromfile(args.config)
    if cfg.get('custom_imports'):
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(**cfg.custom_imports)
    register_all_modules()
    torch.manual_seed(args.seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    tmp = args.out + '.tmp'
    save_checkpoint(dict(state_dict=model.state_dict(), meta=dict(iter=0, seed=args.seed)), tmp)
    os.replace(tmp, args.out)
    print(f'saved untrained weights of {args.config} to {args.out}')


if __name__ == '__main__':
    main()
