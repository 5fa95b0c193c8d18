"""A memory of another dataset: ``memory.dataset_config`` names a config whose training
split the memory indexes (the paper's COCO memory for the ADE20K and Cityscapes models, MAPS
section 3.2: "We choose the COCO 2017 training set for our memory").

Nothing else about such a memory is special: the memory section (encoders, index, root,
retrieval) is the config's own, and retrieval, query keys (the key encoder on what the model
sees, in training and at evaluation: no query cache holds this dataset's images), the leak
guard (by image content: a training image of this dataset is in the memory only if the same
picture is) and the audit all take the path of an own-dataset memory. What this module owns
is the one decision that differs: which training split ``tools/build_memory.py`` encodes.
"""
import copy
import os.path as osp

from mmengine.config import Config

from .config_schema import MemoryConfigError

__all__ = ['memory_source_config']


def memory_source_config(cfg: Config, split: str = 'train') -> Config:
    """The config a build of ``cfg``'s memory reads its images from: ``cfg`` itself, or, when
    ``memory.dataset_config`` is set, ``cfg`` with the ``train_dataloader`` of that config
    (its memory section stays ``cfg``'s). Another split of a memory of another dataset is
    refused: its query cache would be written next to the other dataset's
    (``<root>_<split>``)."""
    memory = cfg.get('memory') or {}
    dataset_config = memory.get('dataset_config')
    if not dataset_config:
        return cfg
    if split != 'train':
        raise MemoryConfigError(
            f'memory.dataset_config={dataset_config!r}: the memory {memory.get("root")} '
            f'indexes another dataset, so this config builds no query cache of its {split} '
            f'split (it would go to the other dataset\'s <root>_{split}); at evaluation the '
            'key encoder encodes its images')
    if not osp.isfile(dataset_config):
        raise MemoryConfigError(f'memory.dataset_config: the config {dataset_config} does not '
                                'exist')
    source = Config.fromfile(dataset_config)
    if not (source.get('train_dataloader') or {}).get('dataset'):
        raise MemoryConfigError(f'memory.dataset_config: {dataset_config} has no '
                                'train_dataloader.dataset (the images the memory indexes)')
    out = copy.deepcopy(cfg)
    out.train_dataloader = source.train_dataloader
    return out
