"""tools/model_converters/mask2former_detectron2.py against the official Mask2Former code.

``tests/reference/m2f_detectron2/golden.npz`` was written by ``make_golden.py`` (same folder),
which built facebookresearch/Mask2Former's panoptic models on detectron2 from their own
configs and ran the COCO R50 one with deterministic weights. Here: every key of their COCO
R50/R101, ADE20K and Cityscapes models converts to the MAPS fine-tune configs; the class
order each dataset's detectron2 metadata gives becomes mmmaps' (things first) by name; and
mmdet's Mask2Former with the converted weights computes what their model computed.
"""
import hashlib
import json
import os.path as osp
import pickle
import re
import zlib
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmdet.registry import DATASETS, MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules

from mmmaps.converters import ConversionError, check_against, expected_state
from mmmaps.converters import mask2former_detectron2 as d2c

from ..conftest import REPO_ROOT, load_tool

GOLDEN = osp.join(REPO_ROOT, 'tests', 'reference', 'm2f_detectron2', 'golden.npz')
TOOL = 'tools/model_converters/mask2former_detectron2.py'
MAPS = osp.join(REPO_ROOT, 'configs', 'maps')
M2F_COCO = osp.join(REPO_ROOT, 'configs', 'mask2former',
                    'mask2former_r50_8xb2-lsj-50e_coco-panoptic.py')
DATASET_OF = {'coco_r50': 'coco', 'coco_r101': 'coco', 'ade20k_r50': 'ade20k',
              'cityscapes_r50': 'cityscapes'}
ATOL = 1e-4


def official_tensor(name, shape):
    """make_golden.py's ``deterministic_tensor`` rule, keyed by the detectron2 name."""
    rng = np.random.RandomState(zlib.crc32(name.encode()))
    last = name.rsplit('.', 1)[-1]
    if last == 'num_batches_tracked':
        return np.zeros(shape, dtype=np.int64)
    if last == 'running_mean':
        return rng.uniform(-0.1, 0.1, shape).astype(np.float32)
    if last == 'running_var':
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if name.endswith(('query_feat.weight', 'query_embed.weight', 'level_embed',
                      'level_embed.weight')):
        return rng.uniform(-np.sqrt(3.0), np.sqrt(3.0), shape).astype(np.float32)
    if len(shape) >= 2:
        gain = 1.0
        if re.search(r'^sem_seg_head\.predictor\.transformer_(self|cross)_attention_layers\.'
                     r'\d+\.(self_attn|multihead_attn)\.out_proj\.weight$', name):
            gain = 0.25
        elif name == 'sem_seg_head.predictor.class_embed.weight':
            gain = 4.0
        bound = gain * np.sqrt(3.0 / np.prod(shape[1:]))
        return rng.uniform(-bound, bound, shape).astype(np.float32)
    if last == 'weight':
        return (1.0 + rng.uniform(-0.1, 0.1, shape)).astype(np.float32)
    return rng.uniform(-0.1, 0.1, shape).astype(np.float32)


@pytest.fixture(scope='module')
def golden():
    data = np.load(GOLDEN)
    return data, json.loads(bytes(data['info']))


@pytest.mark.parametrize('variant', ['coco_r50', 'coco_r101', 'ade20k_r50', 'cityscapes_r50'])
def test_every_key_of_the_official_models_converts(golden, variant):
    _, info = golden
    keys = info['keys'][variant]
    state = {name: torch.empty(shape, device='meta') for name, shape in keys}
    dataset = DATASET_OF[variant]
    assert d2c.detect_dataset(state) == dataset
    converted, source_of = d2c.convert_state_dict(state, dataset)
    options = {'model.backbone.depth': 101} if 'r101' in variant else None
    expected = expected_state(osp.join(MAPS, d2c.CONFIGS[dataset]), options)
    memory = [k for k in expected if '.memory_attn.' in k]
    assert memory  # the MAPS-only tensors are exactly what the checkpoint cannot fill
    check_against(converted, {k: v for k, v in expected.items() if k not in memory},
                  source_of, variant)
    used = set(source_of.values())
    assert {k for k, _ in keys} - used == {'criterion.empty_weight'}


@pytest.mark.parametrize('variant', ['ade20k_r50', 'cityscapes_r50'])
def test_classifier_rows_follow_mmmaps_class_order_by_name(golden, variant):
    """Row i of detectron2's classifier is class i of its dataset metadata (recorded by the
    golden script); after conversion, row j must be mmmaps' class j (names compared with
    the config's metainfo, things first)."""
    _, info = golden
    official = info['configs'][variant]['classes']  # [name, isthing] in index order
    dataset = DATASET_OF[variant]
    rows = torch.arange(len(official) + 1, dtype=torch.float32)[:, None].repeat(1, 4)
    state = {'sem_seg_head.predictor.class_embed.weight': rows,
             'sem_seg_head.predictor.class_embed.bias': rows[:, 0].clone()}
    converted, _ = d2c.convert_state_dict(state, dataset)
    order = converted['panoptic_head.cls_embed.bias'].long().tolist()
    cfg = Config.fromfile(osp.join(MAPS, d2c.CONFIGS[dataset]))
    test_set = cfg.test_dataloader.dataset  # its metainfo, or its dataset class's
    register_all_modules()
    meta = test_set.get('metainfo') or DATASETS.get(test_set.type).METAINFO
    names = {'window ': 'window', 'plane': 'airplane'}  # two spellings differ
    assert [names.get(official[i][0], official[i][0]) for i in order[:-1]] == list(
        meta['classes'])
    assert [official[i][1] for i in order[:-1]] == [True] * len(meta['thing_classes']) + [
        False] * len(meta['stuff_classes'])
    assert order[-1] == len(official)  # "no object" stays last


def official_state(info):
    state = OrderedDict((name, torch.from_numpy(official_tensor(name, tuple(shape))))
                        for name, shape in info['keys']['coco_r50'])
    digest = hashlib.sha256()
    for tensor in state.values():
        digest.update(tensor.numpy().tobytes())
    assert digest.hexdigest() == info['weights_sha256']  # the same weights as the generator
    return state


def zoo_pickle(state, path):
    """A model-zoo style .pkl: numpy arrays under 'model'."""
    with open(path, 'wb') as f:
        pickle.dump({'model': OrderedDict((k, v.numpy()) for k, v in state.items()),
                     '__author__': 'Mask2Former'}, f)


def test_mask2former_with_converted_weights_computes_what_the_official_code_computed(
        golden, tmp_path):
    data, info = golden
    src, dst = str(tmp_path / 'model_final.pkl'), str(tmp_path / 'm2f_coco.pth')
    zoo_pickle(official_state(info), src)
    assert load_tool(TOOL).main([src, dst]) == 0
    register_all_modules()
    import mmmaps  # noqa: F401
    cfg = Config.fromfile(M2F_COCO)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    checkpoint = torch.load(dst, weights_only=True)
    assert checkpoint['meta']['dataset'] == 'coco'
    model.load_state_dict(checkpoint['state_dict'], strict=True)
    model.eval()
    head = model.panoptic_head
    for index in (0, 1):
        def g(name):
            return data[f'img{index}.{name}']

        inputs = torch.from_numpy(g('input'))[None]
        sample = DetDataSample(metainfo=dict(batch_input_shape=tuple(inputs.shape[-2:]),
                                             img_shape=tuple(inputs.shape[-2:])))
        with torch.no_grad():
            feats = model.extract_feat(inputs)
            for level, feat in enumerate(feats):  # res2..res5
                np.testing.assert_allclose(feat[0].mean((1, 2)), g(f'res{level + 2}_mean'),
                                           atol=ATOL, rtol=1e-4)
            mask_features, multi_scale = head.pixel_decoder(feats)
            channels = info['images'][index]['mask_feature_channels']
            np.testing.assert_allclose(mask_features[0, channels], g('mask_features'),
                                       atol=ATOL, rtol=1e-4)
            np.testing.assert_allclose(multi_scale[0][0], g('multi_scale_0'), atol=ATOL,
                                       rtol=1e-4)
            np.testing.assert_allclose(multi_scale[1][0], g('multi_scale_1'), atol=ATOL,
                                       rtol=1e-4)
            cls, masks = head(feats, [sample])
        np.testing.assert_allclose(cls[-1][0], g('pred_logits'), atol=ATOL, rtol=1e-4)
        np.testing.assert_allclose(masks[-1][0], g('pred_masks'), atol=ATOL, rtol=1e-4)
        np.testing.assert_allclose(torch.stack([c[0] for c in cls[:-1]]), g('aux_logits'),
                                   atol=ATOL, rtol=1e-4)
        queries = info['aux_mask_queries']
        np.testing.assert_allclose(torch.stack([m[0, queries] for m in masks[:-1]]),
                                   g('aux_masks'), atol=ATOL, rtol=1e-4)


def test_refusals_name_what_they_refuse(golden, tmp_path, capsys):
    _, info = golden
    state = {name: torch.zeros(shape) for name, shape in info['keys']['coco_r50']}
    state['sem_seg_head.predictor.swin_extra.weight'] = torch.zeros(3)
    with pytest.raises(ConversionError, match=r'predictor\.swin_extra\.weight'):
        d2c.convert_state_dict(state, 'coco')
    tool = load_tool(TOOL)
    # a pickle that would run code is refused before anything runs
    evil = str(tmp_path / 'evil.pkl')

    class Boom:
        def __reduce__(self):
            return (print, ('ran!', ))

    with open(evil, 'wb') as f:
        pickle.dump({'model': {'w': Boom()}}, f)
    assert tool.main([evil, str(tmp_path / 'out.pth')]) == 1
    out = capsys.readouterr()
    assert 'builtins.print' in out.err and 'ran!' not in out.out
    # a dataset the classifier contradicts
    src = str(tmp_path / 'coco.pkl')
    zoo_pickle({k: v for k, v in state.items() if 'swin' not in k}, src)
    assert tool.main([src, str(tmp_path / 'x.pth'), '--dataset', 'ade20k']) == 1
    assert 'classifier has 133 classes (coco)' in capsys.readouterr().err
    assert not osp.exists(tmp_path / 'x.pth')


def test_old_key_layout_and_names_are_read_as_detectron2_reads_them(golden):
    """Checkpoints saved before the pixel decoder moved under ``pixel_decoder`` (and with
    ``static_query``) convert to the same tensors."""
    _, info = golden
    state = {name: torch.zeros(shape, device='meta') for name, shape in info['keys']['coco_r50']}
    old = {k.replace('sem_seg_head.pixel_decoder.', 'sem_seg_head.').replace(
        'query_feat', 'static_query'): v for k, v in state.items()}
    new_keys = set(d2c.convert_state_dict(state, 'coco')[0])
    assert set(d2c.convert_state_dict(old, 'coco')[0]) == new_keys
