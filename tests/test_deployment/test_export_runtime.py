"""ONNX export and onnxruntime inference, checked against the PyTorch models' own predict
paths (not against the graph modules that were exported)."""
import json
import os.path as osp
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO_ROOT, load_config_with_root

pytest.importorskip('onnxruntime')

from mmdet.structures import DetDataSample  # noqa: E402

from mmmaps.deployment import (CheckpointMismatchError, DeploymentError,  # noqa: E402
                               export_onnx, read_export)
from mmmaps.deployment.export import build_model_from_config  # noqa: E402

CONFIGS = dict(
    mask2former='configs/mask2former/mask2former_r18_synthetic-panoptic.py',
    maps='configs/maps/maps_r18_synthetic-panoptic.py',
    panoptic_segformer='configs/panoptic_segformer/panoptic-segformer_r18_synthetic.py',
    panoptic_segformer_release='configs/panoptic_segformer/'
    'panoptic-segformer-release_r18_synthetic.py')
TOL = 1e-3


def _config(name, root, options=None):
    return load_config_with_root(osp.join(REPO_ROOT, CONFIGS[name]), root, options)


def _random_checkpoint(cfg, path, seed=0):
    torch.manual_seed(seed)
    model = build_model_from_config(cfg)
    model.init_weights()
    torch.save(dict(state_dict=model.state_dict(), meta={}), path)
    return model.eval()


def _session(folder, name='model.onnx'):
    import onnxruntime as ort
    return ort.InferenceSession(osp.join(folder, name), providers=['CPUExecutionProvider'])


def _samples(batch_shape, img_shapes):
    return [DetDataSample(metainfo=dict(batch_input_shape=batch_shape, img_shape=shape,
                                        pad_shape=batch_shape)) for shape in img_shapes]


def _upsampled(mask_logits, shape):
    return F.interpolate(torch.from_numpy(mask_logits), size=shape, mode='bilinear',
                         align_corners=False)


def _assert_close(actual, expected):
    expected = expected.detach().numpy()
    actual = actual.numpy() if torch.is_tensor(actual) else actual
    finite = np.isfinite(expected)
    assert np.array_equal(finite, np.isfinite(actual))
    assert np.abs(actual[finite] - expected[finite]).max() < TOL


@pytest.fixture(scope='module')
def exports(synthetic_root, tmp_path_factory):
    """Random-init tiny models of every family, exported at 64x64 (Mask2Former and MAPS
    with dynamic batch/height/width, Panoptic SegFormer fixed)."""
    folder = tmp_path_factory.mktemp('exports')
    out = {}
    for name in CONFIGS:
        cfg = _config(name, synthetic_root)
        ckpt = str(folder / f'{name}.pth')
        model = _random_checkpoint(cfg, ckpt)
        dynamic = name in ('mask2former', 'maps')
        export = str(folder / name)
        export_onnx(cfg.filename, ckpt, export, shape=(64, 64), dynamic=dynamic,
                    log=lambda m: None)
        out[name] = (model, export, ckpt, cfg)
    return out


def test_mask2former_matches_predict_path_at_two_shapes(exports):
    model, export, _, _ = exports['mask2former']
    session = _session(export)
    for batch, shape in ((1, (64, 64)), (2, (96, 64))):
        image = torch.randn(batch, 3, *shape, generator=torch.Generator().manual_seed(1))
        samples = _samples(shape, [shape] * batch)
        with torch.no_grad():
            cls, masks = model.panoptic_head.predict(model.extract_feat(image), samples)
        onnx_cls, onnx_masks = session.run(None, {'inputs': image.numpy()})
        assert onnx_masks.shape[-2:] == (shape[0] // 4, shape[1] // 4)
        _assert_close(onnx_cls, cls)
        _assert_close(_upsampled(onnx_masks, shape), masks)


def test_maps_matches_predict_path_with_padded_memory(exports):
    from mmmaps.memory.retriever import RetrievalResult
    model, export, _, _ = exports['maps']
    session = _session(export)
    head = model.panoptic_head
    generator = torch.Generator().manual_seed(2)
    image = torch.randn(2, 3, 64, 64, generator=generator)
    for scene_slots, object_slots, pad in ((5, 12, 'some'), (3, 31, 'some'), (5, 9, 'all')):
        scene = F.normalize(torch.randn(2, scene_slots, head.scene_memory_dims,
                                        generator=generator), dim=-1)
        objects = F.normalize(torch.randn(2, object_slots, head.object_memory_dims,
                                          generator=generator), dim=-1)
        scene_mask = torch.zeros(2, scene_slots, dtype=torch.bool)
        scene_mask[1, -2:] = True  # image 1 found fewer scenes
        object_mask = torch.zeros(2, object_slots, dtype=torch.bool)
        object_mask[0, object_slots // 2:] = True
        if pad == 'all':
            object_mask[1] = True  # image 1 has no objects at all
        # the PyTorch path reads the memory from each sample's retrieval record
        samples = _samples((64, 64), [(64, 64)] * 2)
        for b, sample in enumerate(samples):
            sample.set_metainfo(dict(retrieval=RetrievalResult(
                scene_values=scene[b:b + 1], scene_mask=scene_mask[b:b + 1],
                image_ids=torch.zeros(1, scene_slots, dtype=torch.long),
                scores=torch.zeros(1, scene_slots),
                rows=torch.zeros(1, scene_slots, dtype=torch.long),
                object_values=objects[b:b + 1], object_mask=object_mask[b:b + 1])))
        with torch.no_grad():
            cls, masks = head.predict(model.extract_feat(image), samples)
        onnx_cls, onnx_masks = session.run(None, dict(
            inputs=image.numpy(), scene=scene.numpy(), scene_mask=scene_mask.numpy(),
            objects=objects.numpy(), object_mask=object_mask.numpy()))
        _assert_close(onnx_cls, cls)
        _assert_close(_upsampled(onnx_masks, (64, 64)), masks)
        # the memory matters: zeroing it changes the logits
        changed = session.run(None, dict(
            inputs=image.numpy(), scene=np.zeros_like(scene.numpy()),
            scene_mask=scene_mask.numpy(), objects=np.zeros_like(objects.numpy()),
            object_mask=object_mask.numpy()))[0]
        assert np.abs(changed - onnx_cls).max() > 1e-4


@pytest.mark.parametrize('name', ['panoptic_segformer', 'panoptic_segformer_release'])
def test_panoptic_segformer_matches_predict_path_with_padding(exports, name):
    """A padded batch: mmdet builds the padding masks from img_shape, the graph from its
    img_shape input."""
    model, export, _, _ = exports[name]
    session = _session(export)
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    img_shapes = [(64, 64), (40, 52)]
    image[1, :, 40:] = 0
    image[1, :, :, 52:] = 0
    samples = _samples((64, 64), img_shapes)
    with torch.no_grad():
        head_inputs = model.forward_transformer(model.extract_feat(image), samples)
        cls, masks = model.bbox_head.predict(**head_inputs, batch_data_samples=samples,
                                             with_stuff=True)
    assert head_inputs['memory_mask'] is not None and head_inputs['memory_mask'].any()

    def run(b, img_shape):  # the fixed-shape export takes one image
        return session.run(None, dict(inputs=image[b:b + 1].numpy(),
                                      img_shape=np.array([img_shape], dtype=np.int64)))

    runs = [run(b, shape) for b, shape in enumerate(img_shapes)]
    onnx_cls, onnx_masks = (np.concatenate(o) for o in zip(*runs))
    _assert_close(onnx_cls, cls)
    _assert_close(onnx_masks, masks)  # both on the head's grid
    # without the padding mask the result is different: the padding is not ignored
    unmasked = run(1, (64, 64))[0][0]
    finite = np.isfinite(unmasked)
    assert np.abs(unmasked[finite] - onnx_cls[1][finite]).max() > 1e-5


def test_key_encoder_matches_the_memory_encoder(exports, synthetic_root):
    from mmmaps.memory.encoders import build_memory_encoder
    from mmmaps.deployment import ONNXKeyEncoder
    _, export, _, cfg = exports['maps']
    info = read_export(export)
    encoder = build_memory_encoder(cfg.memory.key_encoder)
    onnx_encoder = ONNXKeyEncoder(osp.join(export, info['key_encoder']['file']),
                                  info['key_encoder']['describe'],
                                  info['key_encoder']['image_size'])
    generator = torch.Generator().manual_seed(4)
    images = [torch.rand(3, 70, 90, generator=generator) * 255,
              torch.rand(3, 64, 64, generator=generator) * 255]
    expected = encoder(images)
    actual = onnx_encoder(images)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() < TOL
    assert torch.allclose(actual.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert onnx_encoder.describe() == encoder.describe()


def test_deploy_json_records_the_export(exports):
    _, export, ckpt, cfg = exports['maps']
    info = read_export(export)
    import hashlib
    assert info['checkpoint_sha256'] == hashlib.sha256(open(ckpt, 'rb').read()).hexdigest()
    assert info['opset'] == 17 and info['family'] == 'maps'
    names = [spec['name'] for spec in info['inputs']]
    assert names == ['inputs', 'scene', 'scene_mask', 'objects', 'object_mask']
    assert info['inputs'][3]['shape'][1] == 'object_slots'
    assert info['memory']['scene_dims'] == cfg.model.panoptic_head.scene_memory_dims
    import onnx
    graph = onnx.load(osp.join(export, 'model.onnx')).graph
    assert [i.name for i in graph.input] == names
    # deformable attention as Gather ops by default (tests/test_deployment/
    # test_deformable_attention.py exports both kinds)
    assert info['deformable_attention'] == 'gather'
    assert not any(node.op_type == 'GridSample' for node in graph.node)
    m2f = read_export(exports['mask2former'][1])
    assert m2f['inputs'][0]['shape'] == ['batch', 3, 'height', 'width']


# ---------------------------------------------------------------------- clear errors
def test_checkpoint_of_another_config_is_refused(exports, synthetic_root, tmp_path):
    _, _, psf_ckpt, _ = exports['panoptic_segformer']
    cfg = _config('mask2former', synthetic_root)
    with pytest.raises(CheckpointMismatchError, match='does not match the model of'):
        export_onnx(cfg.filename, psf_ckpt, str(tmp_path / 'out'), shape=(64, 64),
                    log=lambda m: None)
    assert not (tmp_path / 'out').exists()
    # same architecture, other width: shapes named
    ckpt = str(tmp_path / 'wide.pth')
    _random_checkpoint(_config('mask2former', synthetic_root,
                               {'model.panoptic_head.num_queries': 21}), ckpt)
    with pytest.raises(CheckpointMismatchError, match=r'query_feat.weight: checkpoint \(21'):
        export_onnx(cfg.filename, ckpt, str(tmp_path / 'out'), shape=(64, 64),
                    log=lambda m: None)


def test_missing_onnxruntime_is_a_clear_error(monkeypatch, exports, tmp_path):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    _, _, ckpt, cfg = exports['mask2former']
    with pytest.raises(ImportError, match='requirements/deploy.txt'):
        export_onnx(cfg.filename, ckpt, str(tmp_path / 'out'), log=lambda m: None)
    from mmmaps.deployment import ONNXRuntimePanopticModel
    with pytest.raises(ImportError, match='onnxruntime'):
        ONNXRuntimePanopticModel(exports['mask2former'][1], {}, {})


def test_memory_with_other_dims_is_refused(exports, synthetic_memory):
    """The tiny memory holds 384-d values; an export of a 192-d MAPS must refuse it."""
    from mmmaps.deployment import ONNXRuntimePanopticModel, onnx_model_config
    from mmmaps.memory.external_memory import build_external_memory
    from mmdet.registry import MODELS
    _, export, _, cfg = exports['maps']
    model = MODELS.build(onnx_model_config(cfg, export))
    memory = build_external_memory(cfg.memory, root=synthetic_memory, device='cpu',
                                   key_encoder=model.memory_key_encoder())
    model.attach_memory(memory)  # the same dims: accepted
    info = json.load(open(osp.join(export, 'deploy.json')))
    info['memory']['scene_dims'] = 192
    model.info = info
    assert isinstance(model, ONNXRuntimePanopticModel)
    with pytest.raises(DeploymentError, match='does not fit the exported MAPS graph'):
        model.attach_memory(memory)


def test_config_that_differs_from_the_export_is_refused(exports, synthetic_root):
    from mmmaps.deployment import onnx_model_config
    _, export, _, _ = exports['mask2former']
    other = _config('mask2former', synthetic_root, {'model.panoptic_head.num_queries': 21})
    with pytest.raises(DeploymentError, match='model.panoptic_head'):
        onnx_model_config(other, export)
    # post-processing settings may change
    post = _config('mask2former', synthetic_root, {'model.test_cfg.iou_thr': 0.5})
    assert onnx_model_config(post, export)['test_cfg']['iou_thr'] == 0.5


def test_tampered_or_foreign_folders_are_refused(exports, tmp_path):
    import shutil
    export = str(tmp_path / 'copy')
    shutil.copytree(exports['mask2former'][1], export)
    with open(osp.join(export, 'model.onnx'), 'ab') as f:
        f.write(b'\0')
    with pytest.raises(DeploymentError, match='model.onnx is not the file that was exported'):
        read_export(export)
    with pytest.raises(DeploymentError, match='has no deploy.json'):
        read_export(str(tmp_path))


def test_export_never_replaces_foreign_folders(exports, tmp_path):
    from mmmaps.utils.output_dirs import OutputOwnershipError
    _, _, ckpt, cfg = exports['mask2former']
    foreign = tmp_path / 'results'
    foreign.mkdir()
    (foreign / 'notes.txt').write_text('mine')
    with pytest.raises(OutputOwnershipError, match='notes.txt'):
        export_onnx(cfg.filename, ckpt, str(foreign), shape=(64, 64), log=lambda m: None)
    assert (foreign / 'notes.txt').read_text() == 'mine'
    with pytest.raises(OutputOwnershipError, match='--force'):
        export_onnx(cfg.filename, ckpt, exports['mask2former'][1], shape=(64, 64),
                    log=lambda m: None)


def test_fixed_shape_refuses_larger_images(exports):
    from mmmaps.deployment import onnx_model_config
    from mmdet.registry import MODELS
    _, export, _, cfg = exports['panoptic_segformer']
    model = MODELS.build(onnx_model_config(cfg, export))
    samples = _samples((96, 64), [(96, 64)])
    with pytest.raises(DeploymentError, match='does not fit the fixed input 64x64'):
        model.predict(torch.zeros(1, 3, 96, 64), samples)


def test_panoptic_segformer_dynamic_height_and_width(exports, tmp_path):
    """--dynamic: one graph for any size (one image per run), padding masked."""
    model, _, ckpt, cfg = exports['panoptic_segformer']
    export = str(tmp_path / 'dynamic')
    export_onnx(cfg.filename, ckpt, export, shape=(64, 64), dynamic=True, log=lambda m: None)
    info = read_export(export)
    assert info['inputs'][0]['shape'] == [1, 3, 'height', 'width']
    stride = info['mask_stride']
    session = _session(export)
    for shape, valid in (((96, 64), (80, 64)), ((64, 128), (64, 100))):
        image = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(5))
        image[..., valid[0]:, :] = 0
        image[..., valid[1]:] = 0
        samples = _samples(shape, [valid])
        with torch.no_grad():
            head_inputs = model.forward_transformer(model.extract_feat(image), samples)
            cls, masks = model.bbox_head.predict(**head_inputs, batch_data_samples=samples)
        onnx_cls, onnx_masks = session.run(None, dict(
            inputs=image.numpy(), img_shape=np.array([valid], dtype=np.int64)))
        assert onnx_masks.shape[-2:] == (shape[0] // stride, shape[1] // stride)
        _assert_close(onnx_cls, cls)
        _assert_close(onnx_masks, masks)  # both on the head's grid


def test_maps_aug_cls_takes_the_query_keys(exports, tmp_path):
    """MAPS-Aug-CLS appends each image's own key to its scene memory: a graph input."""
    from mmmaps.memory.retriever import RetrievalResult
    _, _, ckpt, cfg = exports['maps']
    export = str(tmp_path / 'aug_cls')
    export_onnx(cfg.filename, ckpt, export, shape=(64, 64),
                cfg_options={'model.panoptic_head.aug_cls': True}, log=lambda m: None)
    info = read_export(export)
    assert [s['name'] for s in info['inputs']][-1] == 'query_keys' and info['memory']['aug_cls']
    aug_cfg = _config('maps', cfg.train_dataloader.dataset.data_root,
                      {'model.panoptic_head.aug_cls': True})
    model = build_model_from_config(aug_cfg).eval()
    model.load_state_dict(torch.load(ckpt, weights_only=True)['state_dict'])
    head = model.panoptic_head
    generator = torch.Generator().manual_seed(6)
    image = torch.randn(1, 3, 64, 64, generator=generator)
    scene = F.normalize(torch.randn(1, 5, head.scene_memory_dims, generator=generator), dim=-1)
    objects = F.normalize(torch.randn(1, 7, head.object_memory_dims, generator=generator), dim=-1)
    keys = F.normalize(torch.randn(1, head.scene_memory_dims, generator=generator), dim=-1)
    scene_mask, object_mask = torch.zeros(1, 5, dtype=torch.bool), torch.zeros(1, 7,
                                                                               dtype=torch.bool)
    sample = _samples((64, 64), [(64, 64)])[0]
    sample.set_metainfo(dict(retrieval=RetrievalResult(
        scene_values=scene, scene_mask=scene_mask, image_ids=torch.zeros(1, 5).long(),
        scores=torch.zeros(1, 5), rows=torch.zeros(1, 5).long(), object_values=objects,
        object_mask=object_mask, query_keys=keys)))
    with torch.no_grad():
        cls, masks = head.predict(model.extract_feat(image), [sample])
    feeds = dict(inputs=image.numpy(), scene=scene.numpy(), scene_mask=scene_mask.numpy(),
                 objects=objects.numpy(), object_mask=object_mask.numpy(), query_keys=keys.numpy())
    onnx_cls, onnx_masks = _session(export).run(None, feeds)
    _assert_close(onnx_cls, cls)
    _assert_close(_upsampled(onnx_masks, (64, 64)), masks)
    other = _session(export).run(None, dict(feeds, query_keys=-feeds['query_keys']))[0]
    assert np.abs(other - onnx_cls).max() > 1e-5  # the key is read
