"""MAPS initialised from a trained Mask2Former checkpoint (issue 24).

A Mask2Former checkpoint loads into MAPS through mmengine's own ``load_checkpoint`` (what
``load_from`` and ``tools/test.py`` use): every Mask2Former tensor lands, only the memory
attention stays at its initialisation (listed in the log), and with ``memory_init='identity'``
MAPS then computes that Mask2Former's outputs bit for bit, with its memory on. The reference
is mmdet's ``Mask2Former`` built from the tiny config with the same checkpoint.
"""
import os.path as osp

import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.runner import load_checkpoint

from mmdet.registry import DATASETS, MODELS
from mmdet.utils import register_all_modules

import mmmaps.models.detectors.maps as maps_module
from mmmaps.models.detectors.maps import CheckpointMismatchError

from ..conftest import TINY_M2F, load_config_with_root
from .test_maps import build_tiny_maps


@pytest.fixture
def mask2former(synthetic_root, tmp_path):
    """A tiny Mask2Former (seed 3, unlike MAPS' seed 0) and its checkpoint file."""
    cfg = load_config_with_root(TINY_M2F, synthetic_root)
    register_all_modules()
    torch.manual_seed(3)
    model = MODELS.build(cfg.model)
    model.init_weights()
    for p in model.parameters():  # a "trained" model: no tensor at a default value
        p.data.add_(torch.randn_like(p) * 0.01)
    path = str(tmp_path / 'mask2former.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict(iter=1200)), path)
    return model.eval(), cfg, path


@pytest.fixture
def logged(monkeypatch):
    lines = []
    monkeypatch.setattr(maps_module, 'print_log',
                        lambda msg, logger=None, level=None: lines.append(msg))
    return lines


def val_batch(cfg, model, num=2):
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    return model.data_preprocessor(pseudo_collate([dataset[i] for i in range(num)]), False)


def maps_loaded_from(path, root, memory_root, memory_init='identity'):
    maps, cfg = build_tiny_maps(root, memory_root,
                                {'model.panoptic_head.memory_init': memory_init})
    load_checkpoint(maps, path, map_location='cpu', logger='silent')
    return maps.eval(), cfg


def test_a_mask2former_checkpoint_makes_maps_that_mask2former(mask2former, synthetic_root,
                                                              synthetic_memory, logged):
    m2f, cfg, path = mask2former
    maps, _ = maps_loaded_from(path, synthetic_root, synthetic_memory)
    # every Mask2Former tensor landed; the log names exactly the tensors MAPS adds
    theirs, ours = m2f.state_dict(), maps.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in theirs.items())
    added = sorted(set(ours) - set(theirs))
    assert added and all('.memory_attn.' in k for k in added)
    assert len(logged) == 1 and logged[0].startswith(f'{len(added)} MAPS-only tensors')
    assert sorted(logged[0].split('): ', 1)[1].split(', ')) == added

    data = val_batch(cfg, maps)
    with torch.no_grad():
        retrieval = maps.retrieve(data['inputs'], data['data_samples'])
        assert not retrieval.scene_mask.all() and not retrieval.object_mask.all()
        feats = maps.extract_feat(data['inputs'])
        got = maps.panoptic_head(feats, data['data_samples'])  # memory on
        expected = m2f.panoptic_head(m2f.extract_feat(data['inputs']), data['data_samples'])
        for ours_layers, their_layers in zip(got, expected):  # class and mask logits
            assert all(torch.equal(a, b) for a, b in zip(ours_layers, their_layers))
        pan = maps.predict(data['inputs'], data['data_samples'])
        ref = m2f.predict(data['inputs'], val_batch(cfg, m2f)['data_samples'])
    for a, b in zip(pan, ref):
        assert torch.equal(a.pred_panoptic_seg.sem_seg, b.pred_panoptic_seg.sem_seg)

    # the control: memory layers initialised as Mask2Former's decoder change the outputs
    xavier, _ = maps_loaded_from(path, synthetic_root, synthetic_memory, 'xavier')
    with torch.no_grad():
        xavier.retrieve(data['inputs'], data['data_samples'])
        changed = xavier.panoptic_head(feats, data['data_samples'])
    assert not torch.equal(changed[0][-1], expected[0][-1])


def test_the_memory_layers_learn_from_the_first_step(mask2former, synthetic_root,
                                                     synthetic_memory, logged):
    _, cfg, path = mask2former
    maps, _ = maps_loaded_from(path, synthetic_root, synthetic_memory)
    maps.train()
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    data = maps.data_preprocessor(pseudo_collate([dataset[i] for i in range(2)]), True)
    losses = maps(**data, mode='loss')
    total, _ = maps.parse_losses(losses)
    total.backward()
    layers = [layer for layer in maps.panoptic_head.transformer_decoder.layers
              if layer.memory_attn is not None]
    assert len(layers) == 4
    for layer in layers:
        # the value projection (zero) gets gradients at once; query/key only once it is not
        # zero (their gradient passes through V)
        assert layer.memory_attn.v_proj.weight.grad.abs().sum() > 0
        assert layer.memory_attn.q_proj.weight.grad.abs().sum() == 0
    before = layers[0].memory_attn.v_proj.weight.detach().clone()
    torch.optim.SGD(maps.parameters(), lr=0.1).step()
    assert not torch.equal(layers[0].memory_attn.v_proj.weight, before)


def _variant(path, tmp_path, edit):
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint['state_dict'])
    out = str(tmp_path / 'edited.pth')
    torch.save(checkpoint, out)
    return out


def test_a_checkpoint_that_does_not_fit_is_refused_by_name(mask2former, synthetic_root,
                                                          synthetic_memory, tmp_path, logged):
    _, _, path = mask2former
    maps, _ = build_tiny_maps(synthetic_root, synthetic_memory,
                              {'model.panoptic_head.memory_init': 'identity'})
    cases = [
        (lambda s: s.update({'panoptic_head.extra.weight': torch.zeros(2)}),
         r'no place in MAPS: panoptic_head\.extra\.weight'),
        (lambda s: s.update({'panoptic_head.query_embed.weight': torch.zeros(21, 64)}),
         r'panoptic_head\.query_embed\.weight: checkpoint \(21, 64\), model \(20, 64\)'),
        (lambda s: s.pop('backbone.layer2.0.conv1.weight'),
         r'not in the checkpoint.*backbone\.layer2\.0\.conv1\.weight'),
    ]
    for edit, message in cases:
        with pytest.raises(CheckpointMismatchError, match=message):
            load_checkpoint(maps, _variant(path, tmp_path, edit), map_location='cpu',
                            logger='silent')


def test_another_class_count_reinitialises_the_classifier(mask2former, synthetic_root,
                                                          synthetic_memory, tmp_path, logged):
    _, _, path = mask2former
    maps, _ = build_tiny_maps(synthetic_root, synthetic_memory,
                              {'model.panoptic_head.memory_init': 'identity'})
    classifier = maps.panoptic_head.cls_embed.weight.detach().clone()
    other = _variant(path, tmp_path, lambda s: s.update({
        'panoptic_head.cls_embed.weight': torch.ones(10 + 1, 64),
        'panoptic_head.cls_embed.bias': torch.ones(10 + 1)}))
    load_checkpoint(maps, other, map_location='cpu', logger='silent')
    assert torch.equal(maps.panoptic_head.cls_embed.weight, classifier)
    assert any('classifies 10 classes, this model 13' in line for line in logged)
    theirs = torch.load(path, weights_only=True)['state_dict']
    assert torch.equal(maps.state_dict()['panoptic_head.query_feat.weight'],
                       theirs['panoptic_head.query_feat.weight'])
    assert osp.isfile(other)


def test_r50_coco_fine_tune_config_is_mmdets_mask2former_at_step_0():
    """The COCO fine-tune config over mmdet's Mask2Former R50 COCO config: the Mask2Former
    state dict fills everything but the memory attention, nothing is unexpected, and with
    a random (512-d) memory on, the outputs are mmdet's bit for bit."""
    from mmengine.config import Config

    from mmdet.structures import DetDataSample

    from ..conftest import REPO_ROOT
    from .test_maps import random_retrieval, with_retrieval
    register_all_modules()
    configs = [osp.join(REPO_ROOT, 'configs', *parts) for parts in (
        ('mask2former', 'mask2former_r50_8xb2-lsj-50e_coco-panoptic.py'),
        ('maps', 'maps_r50_8xb2-lsj-5e_coco-panoptic_from-mask2former.py'))]
    models = []
    for seed, path in enumerate(configs):
        cfg = Config.fromfile(path)
        cfg.model.backbone.init_cfg = None
        torch.manual_seed(seed)
        models.append(MODELS.build(cfg.model).eval())
    m2f, maps = models
    missing, unexpected = maps.load_state_dict(m2f.state_dict(), strict=False)
    assert not unexpected and missing and all('.memory_attn.' in k for k in missing)
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    samples = [DetDataSample(metainfo=dict(batch_input_shape=(64, 96), img_shape=(64, 96)))]
    with torch.no_grad():
        expected = m2f.panoptic_head(m2f.extract_feat(image), samples)
        got = maps.panoptic_head(maps.extract_feat(image),
                                 with_retrieval(samples, random_retrieval(batch=1, dims=512)))
    for ours, theirs in zip(got, expected):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_a_mask2former_checkpoint_is_not_tested_with_random_memory_layers(
        mask2former, synthetic_root, logged):
    """tools/test.py and the demo load without init_weights(): a Mask2Former checkpoint in a
    MAPS config with the default memory_init would leave the memory layers at PyTorch's
    default init; refused, unless memory_init='identity' (then it is that Mask2Former)."""
    _, _, path = mask2former
    for memory_init, refused in (('xavier', True), ('identity', False)):
        cfg = load_config_with_root(
            osp.join(osp.dirname(TINY_M2F), '..', 'maps', 'maps_r18_synthetic-panoptic.py'),
            synthetic_root, {'model.panoptic_head.memory_init': memory_init})
        register_all_modules()
        model = MODELS.build(cfg.model)  # no init_weights(), as tools/test.py
        if refused:
            with pytest.raises(CheckpointMismatchError, match='random weights'):
                load_checkpoint(model, path, map_location='cpu', logger='silent')
        else:
            load_checkpoint(model, path, map_location='cpu', logger='silent')
            assert logged[-1].startswith('24 MAPS-only tensors')
