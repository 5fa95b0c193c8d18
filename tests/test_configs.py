import glob
import os.path as osp

import pytest
from mmengine.config import Config

from mmdet.registry import DATASETS, MODELS
from mmdet.utils import register_all_modules
from mmmaps.models.detectors import PanopticSegFormer
from mmmaps.models.seg_heads import MaskWiseMergingFusionHead
from tests.conftest import REPO_ROOT

CONFIGS = sorted(p for p in glob.glob(osp.join(REPO_ROOT, 'configs', '**', '*.py'),
                                      recursive=True) if '_base_' not in p)


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.relpath(p, REPO_ROOT))
def test_config_builds(path):
    import mmmaps  # noqa: F401
    register_all_modules()
    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=['mmmaps'], allow_failed_imports=False)
    assert 'model' in cfg or 'memory' in cfg, 'a config builds a model or a memory'
    if 'memory' in cfg:
        check_memory_section(cfg.memory)
    if 'model' not in cfg:
        return
    check_retrieval_settings_have_one_owner(cfg)
    model = MODELS.build(cfg.model)
    head = class_split_head(model)
    fusion = model.panoptic_fusion_head
    assert (fusion.num_things_classes, fusion.num_stuff_classes) == (
        head.num_things_classes, head.num_stuff_classes)
    if isinstance(model, PanopticSegFormer):
        check_panoptic_segformer(model)
    # the class split of the head must be the dataset's
    for loader in (cfg.train_dataloader, cfg.test_dataloader):
        dataset_cfg = loader.dataset
        meta = dataset_cfg.get('metainfo') or DATASETS.get(dataset_cfg.type).METAINFO
        assert len(meta['thing_classes']) == head.num_things_classes
        assert len(meta['stuff_classes']) == head.num_stuff_classes
        assert tuple(meta['classes']) == tuple(meta['thing_classes']) + tuple(
            meta['stuff_classes']), 'things must come first'
    types = [e['type'] for e in cfg.test_evaluator]
    assert types == ['FastCocoPanopticMetric', 'CocoMetric', 'PanopticSemSegMetric']


def class_split_head(model):
    """The head that carries the thing/stuff class split: ``panoptic_head`` of
    Mask2Former/MAPS, ``bbox_head`` of Panoptic SegFormer."""
    if isinstance(model, PanopticSegFormer):
        return model.bbox_head
    return model.panoptic_head


def check_panoptic_segformer(model):
    """Sigmoid class scores merged by the mask-wise merging head; one stuff query per
    stuff class with query decoupling, none with joint matching."""
    fusion = model.panoptic_fusion_head
    assert isinstance(fusion, MaskWiseMergingFusionHead)
    assert fusion.test_cfg['cls_activation'] == 'sigmoid'
    head = model.bbox_head
    expected = head.num_stuff_classes if head.query_decoupling else 0
    assert head.num_stuff_queries == expected


def _keys(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _keys(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _keys(value)


def check_retrieval_settings_have_one_owner(cfg):
    """k, k' and the key encoder live in ``memory`` only: the model states none of them
    (a child config that changes ``memory.retrieval`` cannot leave a stale copy behind)."""
    stale = {'query_encoder', 'num_retrievals', 'random_sampling', 'key_encoder', 'retrieval'}
    found = stale & set(_keys(cfg._cfg_dict.to_dict()['model']))
    assert not found, f'retrieval settings stated in the model section too: {sorted(found)}'
    if 'memory' in cfg:
        from mmmaps.memory.config_schema import check_memory_cfg
        check_memory_cfg(cfg.memory)  # every key, at any depth, is one mmmaps reads


MEMORY_BASES = sorted(glob.glob(osp.join(REPO_ROOT, 'configs', '_base_', 'memory', '*.py')))


def check_memory_section(memory):
    """Encoders build (random weights instead of the local checkpoints) and fit together."""
    from mmmaps.memory import build_memory_encoder
    from mmmaps.memory.faiss_index import normalize_index_cfg
    assert memory.root and memory.retrieval.k >= 1
    key = build_memory_encoder(dict(memory.key_encoder, pretrained=None))
    assert key.kind == 'global'
    if memory.get('dense_encoder'):
        dense = build_memory_encoder(dict(memory.dense_encoder, pretrained=None))
        assert dense.kind == 'dense' and dense.out_channels > 0
    normalize_index_cfg(memory.index)
    assert memory.value_dtype in ('float16', 'float32')


@pytest.mark.parametrize('path', MEMORY_BASES, ids=lambda p: osp.basename(p))
def test_memory_base_builds(path):
    import mmmaps  # noqa: F401
    cfg = Config.fromfile(path)
    check_memory_section(cfg.memory)
