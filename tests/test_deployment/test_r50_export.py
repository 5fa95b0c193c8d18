"""ONNX export of the R50 COCO configs (random weights, small input): ``deploy.json`` and
onnxruntime vs the PyTorch graph module, computed here (not read from ``deploy.json``).

Slow (about a minute each on one CPU core): ``pytest tests/test_deployment/test_r50_export.py
-m slow``. Offline: the backbone's torchvision ``init_cfg`` is dropped and MAPS' CLIP key
and dense encoders get ``pretrained=None`` (random weights from their seed).
"""
import json
import os.path as osp

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT

pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

from mmengine.config import Config  # noqa: E402

from mmmaps.deployment import (OPSET, Mask2FormerGraph, PanopticSegFormerGraph,  # noqa: E402
                               export_onnx, read_export)
from mmmaps.deployment.export import build_model_from_config  # noqa: E402
from mmmaps.deployment.graphs import KeyEncoderGraph  # noqa: E402

CONFIGS = dict(
    mask2former='configs/mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py',
    maps='configs/maps/maps_r50_8xb2-lsj-50e_coco-panoptic.py',
    panoptic_segformer='configs/panoptic_segformer/'
    'panoptic-segformer_r50_8xb1-24e_coco-panoptic.py')
SIZE = 128
TOL = 1e-3
NUM_QUERIES = dict(mask2former=100, maps=100)
NUM_CLASSES = 133  # COCO panoptic: 80 things + 53 stuff


def _export(family, tmp_path):
    """(model in eval mode, export folder, deploy.json, config) of a random R50 model."""
    config = osp.join(REPO_ROOT, CONFIGS[family])
    cfg = Config.fromfile(config)
    options = {'model.backbone.init_cfg': None}
    if family == 'maps':
        options.update({'memory.key_encoder.pretrained': None,
                        'memory.dense_encoder.pretrained': None})
    cfg.merge_from_dict(options)
    torch.manual_seed(0)
    model = build_model_from_config(cfg)
    model.init_weights()
    checkpoint = str(tmp_path / 'init.pth')
    torch.save(dict(state_dict=model.state_dict(), meta={}), checkpoint)
    out = str(tmp_path / 'export')
    info = export_onnx(config, checkpoint, out, shape=(SIZE, SIZE), cfg_options=options,
                       log=lambda msg: None)
    with open(osp.join(out, 'deploy.json')) as f:
        recorded = json.load(f)
    assert recorded == json.loads(json.dumps(info))
    assert read_export(out) == recorded  # files present, sha256 as recorded
    assert recorded['family'] == family
    assert recorded['opset'] == OPSET == 17
    assert recorded['dynamic'] is False and recorded['shape'] == [SIZE, SIZE]
    assert [o['name'] for o in recorded['outputs']] == ['cls_logits', 'mask_logits']
    return model.eval(), out, recorded, cfg


def _session(path):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def _max_diff(graph, session, inputs):
    """max |PyTorch - onnxruntime| per output; the outputs' shapes must agree."""
    with torch.no_grad():
        expected = [t.numpy() for t in graph(*inputs)]
    actual = session.run(['cls_logits', 'mask_logits'],
                         {n: t.numpy() for n, t in zip(graph.input_names, inputs)})
    diffs = []
    for e, a in zip(expected, actual):
        assert e.shape == a.shape
        finite = np.isfinite(e)
        # -inf entries (Panoptic SegFormer: classes a query cannot predict) must coincide
        np.testing.assert_array_equal(finite, np.isfinite(a))
        np.testing.assert_array_equal(e[~finite], a[~finite])
        diffs.append(float(np.abs(e[finite] - a[finite]).max()) if finite.any() else 0.0)
    return diffs, expected


def _image(seed=1):
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _unit(shape, generator):
    return torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)


@pytest.mark.slow
def test_mask2former_r50_export(tmp_path):
    model, out, info, _ = _export('mask2former', tmp_path)
    assert info['inputs'] == [dict(name='inputs', shape=[1, 3, SIZE, SIZE], dtype='float32')]
    assert info['mask_stride'] == 4
    assert 'memory' not in info and 'key_encoder' not in info
    assert not osp.exists(osp.join(out, 'key_encoder.onnx'))
    graph = Mask2FormerGraph(model).eval()
    assert graph.input_names == ['inputs']
    diffs, (cls_logits, mask_logits) = _max_diff(
        graph, _session(osp.join(out, 'model.onnx')), [_image()])
    assert cls_logits.shape == (1, NUM_QUERIES['mask2former'], NUM_CLASSES + 1)
    assert mask_logits.shape == (1, NUM_QUERIES['mask2former'], SIZE // 4, SIZE // 4)
    assert max(diffs) < TOL, diffs


@pytest.mark.slow
def test_maps_r50_export_with_padded_memory(tmp_path):
    from mmmaps.memory.encoders import build_memory_encoder
    model, out, info, cfg = _export('maps', tmp_path)
    names = ['inputs', 'scene', 'scene_mask', 'objects', 'object_mask']
    assert [i['name'] for i in info['inputs']] == names
    assert info['inputs'] == [
        dict(name='inputs', shape=[1, 3, SIZE, SIZE], dtype='float32'),
        dict(name='scene', shape=[1, 'scene_slots', 512], dtype='float32'),
        dict(name='scene_mask', shape=[1, 'scene_slots'], dtype='bool'),
        dict(name='objects', shape=[1, 'object_slots', 512], dtype='float32'),
        dict(name='object_mask', shape=[1, 'object_slots'], dtype='bool')]
    assert info['mask_stride'] == 4
    memory = info['memory']
    assert (memory['reads_scene'], memory['reads_objects'], memory['aug_cls']) == (
        True, True, False)
    assert (memory['scene_dims'], memory['object_dims'], memory['k']) == (512, 512, 5)
    assert info['key_encoder']['image_size'] == 224
    assert info['key_encoder']['outputs'][0]['shape'] == ['batch', 512]

    graph = Mask2FormerGraph(model).eval()
    assert graph.input_names == names
    session = _session(osp.join(out, 'model.onnx'))
    generator = torch.Generator().manual_seed(2)
    export_objects = 3 * memory['k']  # what export_onnx traced with
    cases = []
    for scene_slots, scene_padded, object_slots, object_padded in (
            (5, 1, 80, 23),  # k=5, objects padded to 80
            (3, 2, 7, 3),  # fewer slots than at export
            (5, 0, 41, 40)):  # one real object
        assert object_slots != export_objects
        scene_mask = torch.zeros(1, scene_slots, dtype=torch.bool)
        scene_mask[:, scene_slots - scene_padded:] = True
        object_mask = torch.zeros(1, object_slots, dtype=torch.bool)
        object_mask[:, object_slots - object_padded:] = True
        inputs = [_image(), _unit((1, scene_slots, 512), generator), scene_mask,
                  _unit((1, object_slots, 512), generator), object_mask]
        diffs, (cls_logits, mask_logits) = _max_diff(graph, session, inputs)
        assert cls_logits.shape == (1, NUM_QUERIES['maps'], NUM_CLASSES + 1)
        assert mask_logits.shape == (1, NUM_QUERIES['maps'], SIZE // 4, SIZE // 4)
        assert max(diffs) < TOL, (scene_slots, object_slots, diffs)
        cases.append((inputs, cls_logits))
    # the padded slots are really masked: other values there change nothing
    inputs, cls_logits = cases[0]
    changed = list(inputs)
    changed[3] = inputs[3].clone()
    changed[3][:, -23:] = _unit((1, 23, 512), generator)
    _, (cls_changed, _) = _max_diff(graph, session, changed)
    np.testing.assert_allclose(cls_changed, cls_logits, atol=1e-4)

    # the exported key encoder, against the encoder built from the config
    encoder = build_memory_encoder(cfg.memory.key_encoder).eval()
    key_graph = KeyEncoderGraph(encoder).eval()
    crops = torch.rand(2, 3, 224, 224, generator=generator) * 255
    with torch.no_grad():
        expected = key_graph(crops).numpy()
    (keys, ) = _session(osp.join(out, 'key_encoder.onnx')).run(['keys'],
                                                               {'crops': crops.numpy()})
    assert keys.shape == (2, 512)
    assert float(np.abs(keys - expected).max()) < TOL


@pytest.mark.slow
def test_panoptic_segformer_r50_export(tmp_path):
    model, out, info, cfg = _export('panoptic_segformer', tmp_path)
    assert info['inputs'] == [dict(name='inputs', shape=[1, 3, SIZE, SIZE], dtype='float32'),
                              dict(name='img_shape', shape=[1, 2], dtype='int64')]
    assert info['mask_stride'] == 8
    assert info['with_stuff'] is model._with_stuff is True
    graph = PanopticSegFormerGraph(model, with_stuff=True).eval()
    session = _session(osp.join(out, 'model.onnx'))
    for valid in ((SIZE, SIZE), (SIZE - 32, SIZE // 2)):  # whole input, then padded
        diffs, (cls_logits, mask_logits) = _max_diff(
            graph, session, [_image(), torch.tensor([valid], dtype=torch.int64)])
        queries = cls_logits.shape[1]
        assert cls_logits.shape == (1, queries, NUM_CLASSES)
        assert mask_logits.shape == (1, queries, SIZE // 8, SIZE // 8)
        assert max(diffs) < TOL, (valid, diffs)
