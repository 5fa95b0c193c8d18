"""Panoptic SegFormer: mask decoder pieces against references, query decoupling, variants."""
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.dataset import pseudo_collate
from mmengine.structures import InstanceData, PixelData
from torchvision.ops import sigmoid_focal_loss

from mmdet.registry import DATASETS, MODELS, TASK_UTILS
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmdet.utils import register_all_modules

from mmmaps.models import (AttentionMapCrossAttention, AttentionMapToMask,
                           MaskWiseMergingFusionHead, PanopticSegFormer, PanopticTargets,
                           QueryAssignment, batch_loss_weights, build_panoptic_targets,
                           mask_mass_centers, query_set_losses, resize_masks,
                           select_thing_queries)

from ..conftest import REPO_ROOT, load_config_with_root

TINY_PSF = osp.join(REPO_ROOT, 'configs', 'panoptic_segformer',
                    'panoptic-segformer_r18_synthetic.py')
NUM_THINGS, NUM_STUFF = 7, 6
BOX_FREE_COSTS = [dict(type='FocalLossCost', weight=2.0),
                  dict(type='MassCenterL1Cost', weight=5.0)]


# ---------------------------------------------------------------- mask decoder pieces
def test_attention_map_to_mask_shape_and_parameter_count():
    head = AttentionMapToMask(num_heads=8, num_levels=3, hidden_channels=8)
    assert sum(p.numel() for p in head.parameters()) == 209  # the paper's "200 parameters"
    single = AttentionMapToMask(num_heads=8, num_levels=3, hidden_channels=0)
    assert sum(p.numel() for p in single.parameters()) == 25
    shapes = [(8, 12), (4, 6), (2, 3)]
    attn = torch.randn(2, 5, 8, sum(h * w for h, w in shapes))
    assert head(attn, shapes).shape == (2, 5, 8, 12)

    # reference for the single 1x1 conv: split, reshape, upsample, concatenate, weighted sum
    out = single(attn, shapes)
    maps, start = [], 0
    for h, w in shapes:
        level = attn[..., start:start + h * w].reshape(10, 8, h, w)
        start += h * w
        maps.append(F.interpolate(level, size=(8, 12), mode='bilinear', align_corners=False))
    fused = torch.cat(maps, 1)  # (10, 24, 8, 12), head-major within a level
    weight, bias = single.fc.weight.view(24), single.fc.bias
    expected = (fused * weight[None, :, None, None]).sum(1) + bias
    torch.testing.assert_close(out, expected.view(2, 5, 8, 12), rtol=1e-5, atol=1e-5)

    with pytest.raises(ValueError, match='levels'):
        head(attn[..., :96], shapes[:1])


def test_cross_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = AttentionMapCrossAttention(embed_dims=16, num_heads=4).eval()
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight,
                                            ours.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias,
                                          ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    query, key, value = torch.randn(2, 5, 16), torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 6:] = True
    out, logits = ours(query, key, value, key_padding_mask=pad)
    ref_out, ref_weights = ref(query, key, value, key_padding_mask=pad,
                               average_attn_weights=False)  # (B, h, N, L)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    weights = logits.masked_fill(pad[:, None, None], float('-inf')).softmax(-1)
    torch.testing.assert_close(weights.transpose(1, 2), ref_weights, rtol=1e-5, atol=1e-6)
    assert logits.shape == (2, 5, 4, 9) and torch.isfinite(logits).all()


# ---------------------------------------------------------------- targets and losses
def _sample(img_shape=(20, 30), pad=(32, 32)):
    """One image: two things and sky/water stuff; gt padded like the data preprocessor."""
    masks = np.zeros((2, *pad), np.uint8)
    masks[0, 2:6, 3:9] = 1
    masks[1, 10:20, 0:4] = 1
    sem = torch.full((1, *pad), 255, dtype=torch.long)
    sem[0, :img_shape[0], :img_shape[1]] = NUM_THINGS + 1  # water everywhere else
    sem[0, :2, :img_shape[1]] = NUM_THINGS  # sky on top
    sem[0][torch.from_numpy(masks[0]).bool()] = 2
    sem[0][torch.from_numpy(masks[1]).bool()] = 5
    sample = DetDataSample(metainfo=dict(img_shape=img_shape, batch_input_shape=pad))
    sample.gt_instances = InstanceData(
        labels=torch.tensor([2, 5]),
        bboxes=torch.tensor([[3., 2., 9., 6.], [0., 10., 4., 20.]]),
        masks=BitmapMasks(masks, *pad))
    sample.gt_sem_seg = PixelData(sem_seg=sem)
    return sample


def test_panoptic_targets_split_things_and_stuff():
    sample = _sample()
    targets = build_panoptic_targets(sample, NUM_THINGS, NUM_STUFF)
    assert targets.things.labels.tolist() == [2, 5]
    assert sorted(targets.stuff.labels.tolist()) == [NUM_THINGS, NUM_THINGS + 1]
    sky = targets.stuff.masks[targets.stuff.labels.tolist().index(NUM_THINGS)]
    assert sky.sum() == 2 * 30
    joint = targets.joint()
    assert len(joint) == 4 and joint.bboxes[2:].tolist() == [[0., 0., 30., 2.], [0., 2., 30., 20.]]


def test_batch_loss_weights_hand_computed():
    full = build_panoptic_targets(_sample(), NUM_THINGS, NUM_STUFF)  # 2 things, 2 stuff
    no_stuff = PanopticTargets(full.things, full.stuff[:0])
    # counts over the batch: 4 things, 2 stuff
    assert batch_loss_weights([full, no_stuff], 'count') == pytest.approx((4 / 6, 2 / 6))
    thing_px, stuff_px = 4 * 6 + 10 * 4, 20 * 30 - (4 * 6 + 10 * 4)
    assert batch_loss_weights([full], 'area') == pytest.approx(
        (thing_px / 600, stuff_px / 600))
    assert batch_loss_weights([full], None) == (1.0, 1.0)
    # a batch without stuff: the stuff set counts as one segment, never 0
    assert batch_loss_weights([no_stuff], 'count') == pytest.approx((2 / 3, 1 / 3))
    # area: one segment of the batch's mean segment area (64 px / 2 segments)
    assert batch_loss_weights([no_stuff], 'area') == pytest.approx((64 / 96, 32 / 96))
    with pytest.raises(ValueError, match='weighting'):
        batch_loss_weights([full], 'pixels')


def test_batch_loss_weights_clamp_rank_averaged_counts_at_one(monkeypatch):
    """As the release: lambda_things = T / (T + S) with T = clamp(mean over ranks of the
    thing count, min=1). Two ranks (reduce_mean halves the sums): 2 things and no stuff on
    this rank and none elsewhere -> T = 1, S = clamp(0, 1) = 1; 1 thing, 2 stuff ->
    T = clamp(.5, 1) = 1, S = 1."""
    from mmmaps.models.utils import panoptic_targets
    monkeypatch.setattr(panoptic_targets, 'reduce_mean', lambda t: t / 2)
    full = build_panoptic_targets(_sample(), NUM_THINGS, NUM_STUFF)  # 2 things, 2 stuff
    no_stuff = PanopticTargets(full.things, full.stuff[:0])
    assert batch_loss_weights([no_stuff], 'count') == pytest.approx((.5, .5))
    one_thing = PanopticTargets(full.things[:1], full.stuff)
    assert batch_loss_weights([one_thing], 'count') == pytest.approx((.5, .5))
    assert batch_loss_weights([full, full], 'count') == pytest.approx((.5, .5))


def test_area_averaged_targets_keep_small_objects():
    """A 4x4 object at a position not aligned to the 1/8 grid: its 1/8 target is not empty
    and holds its 16 pixels (bilinear without antialiasing reads 4 pixels per cell)."""
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 10:14, 21:25] = True  # straddles cells (1, 2) and (1, 3)
    target = resize_masks(mask, (8, 8))
    assert target.sum() * 64 == pytest.approx(16.0)
    expected = torch.zeros(8, 8)
    expected[1, 2], expected[1, 3] = 12 / 64, 4 / 64  # columns 21-23 | 24
    torch.testing.assert_close(target[0], expected)
    bilinear = F.interpolate(mask[:, None].float(), size=(8, 8), mode='bilinear',
                             align_corners=False)
    assert bilinear.sum() == 0  # what the old targets were


def test_mass_centers_against_numpy():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 12, 17)) > 0.7
    centers = mask_mass_centers(torch.from_numpy(masks), (10, 15)).numpy()
    for m, (cx, cy) in zip(masks, centers):
        ys, xs = np.nonzero(m)
        assert cx == pytest.approx((xs + 0.5).mean() / 15, rel=1e-5)
        assert cy == pytest.approx((ys + 0.5).mean() / 10, rel=1e-5)


def test_query_set_losses_match_hand_computation():
    torch.manual_seed(0)
    cls, masks = torch.randn(2, 4, 3), torch.randn(2, 4, 5, 5)
    targets = (torch.rand(3, 5, 5) > 0.5).float()
    assignments = [
        QueryAssignment(torch.tensor([1, 3]), torch.tensor([0, 2]), targets[:2], 0.25),
        QueryAssignment(torch.tensor([0]), torch.tensor([1]), targets[2:], 0.75),
    ]
    loss_cls = MODELS.build(dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                                 loss_weight=2.0))
    loss_mask = MODELS.build(dict(type='DiceLoss', use_sigmoid=True, activate=True,
                                  naive_dice=True, eps=1.0, loss_weight=1.0))
    got_cls, got_mask = query_set_losses(cls, masks, assignments, loss_cls, loss_mask)

    onehot = torch.zeros(2, 4, 3)
    onehot[0, 1, 0] = onehot[0, 3, 2] = onehot[1, 0, 1] = 1
    focal = sigmoid_focal_loss(cls, onehot, alpha=0.25, gamma=2.0, reduction='none')
    weights = torch.tensor([0.25, 0.75])[:, None, None]
    expected_cls = 2.0 * (focal * weights).sum() / 3  # 3 positives
    torch.testing.assert_close(got_cls, expected_cls)

    pred = torch.stack([masks[0, 1], masks[0, 3], masks[1, 0]]).sigmoid().flatten(1)
    tgt = targets.flatten(1)
    dice = 1 - (2 * (pred * tgt).sum(1) + 1) / (pred.sum(1) + tgt.sum(1) + 1)
    expected_mask = (dice * torch.tensor([0.25, 0.25, 0.75])).sum() / 3
    torch.testing.assert_close(got_mask, expected_mask)


def test_query_filter_rounds_then_scores():
    torch.manual_seed(0)
    assigner = TASK_UTILS.build(dict(type='HungarianAssigner', match_costs=[
        dict(type='FocalLossCost', weight=2.0), dict(type='MassCenterL1Cost', weight=5.0)]))
    scores = torch.randn(12, 3)
    preds = InstanceData(scores=scores, centers=torch.rand(12, 2))
    gts = InstanceData(labels=torch.tensor([0, 2]), centers=torch.rand(2, 2))
    keep = select_thing_queries(scores, 7, preds, gts, {}, assigner, num_rounds=2)
    first = assigner.assign(preds, gts, {}).gt_inds
    round1 = torch.nonzero(first > 0).squeeze(1)
    assert set(keep[:2].tolist()) == set(round1.tolist())
    rest = torch.tensor([i for i in range(12) if i not in round1.tolist()])
    second = assigner.assign(preds[rest], gts, {}).gt_inds
    assert set(keep[2:4].tolist()) == set(rest[second > 0].tolist())
    confidence = scores.sigmoid().max(-1).values
    others = [i for i in confidence.argsort(descending=True).tolist() if i not in keep[:4]]
    assert keep[4:].tolist() == others[:3]
    assert len(set(keep.tolist())) == 7
    # inference: the top scores
    assert select_thing_queries(scores, 4).tolist() == confidence.topk(4).indices.tolist()
    assert len(select_thing_queries(scores, 50)) == 12


# ---------------------------------------------------------------- the model
def build_psf(root, options=None):
    cfg = load_config_with_root(TINY_PSF, root, options)
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model, cfg


def train_batch(model, cfg, num=2):
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    return model.data_preprocessor(pseudo_collate([dataset[i] for i in range(num)]), True)


def val_batch(model, cfg, num=2):
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    return model.data_preprocessor(pseudo_collate([dataset[i] for i in range(num)]), False)


def predict(model, data):
    return model.predict(data['inputs'], data['data_samples'])


VARIANTS = {
    'default': ({}, {'loc_loss_iou', 'loss_stuff_dice', 'm0.loss_dice'}, set()),
    'box-free': ({'model.bbox_head.location_target': 'mass_center',
                  'model.train_cfg.assigner.match_costs': BOX_FREE_COSTS,
                  'model.train_cfg.mask_assigner.match_costs': BOX_FREE_COSTS + [
                      dict(type='DiceCost', weight=1.0, pred_act=True, eps=1.0)]},
                 {'loc_loss_center', 'loc_d0.loss_center'}, {'loc_loss_iou', 'loc_loss_bbox'}),
    'joint-matching': ({'model.num_queries': 26, 'model.bbox_head.query_decoupling': False},
                       {'loc_loss_cls', 'loss_dice'}, {'loss_stuff_cls'}),
    'no-location-decoder': ({'model.decoder.num_layers': 0,
                             'model.train_cfg.mask_assigner.match_costs': [
                                 dict(type='FocalLossCost', weight=2.0),
                                 dict(type='DiceCost', weight=1.0, pred_act=True, eps=1.0)]},
                            {'loss_cls', 'loss_stuff_cls'}, {'loc_loss_cls'}),
    'query-filter': ({'model.bbox_head.query_filter': dict(num_queries=8, num_rounds=2)},
                     {'loss_dice'}, set()),
    'self-attn-1-head': ({'model.bbox_head.mask_decoder.layer_cfg.self_attn': True,
                          'model.bbox_head.mask_decoder.layer_cfg.num_heads': 1},
                         {'loss_dice'}, set()),
    'no-deep-supervision': ({'model.bbox_head.deep_supervision': False},
                            {'loss_cls', 'loss_stuff_dice'}, {'m0.loss_cls', 'm1.loss_dice'}),
    'area-weights': ({'model.bbox_head.thing_stuff_weighting': 'area'}, {'loss_dice'}, set()),
}


@pytest.mark.parametrize('name', list(VARIANTS))
def test_variants_train_and_predict(synthetic_root, name):
    options, present, absent = VARIANTS[name]
    model, cfg = build_psf(synthetic_root, options)
    data = train_batch(model, cfg)
    model.train()
    losses = model(**data, mode='loss')
    assert present <= set(losses) and not absent & set(losses), sorted(losses)
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    head = model.bbox_head
    assert head.mask_decoder.mask_heads[-1].fc[0].weight.grad.abs().sum() > 0
    assert head.mask_decoder.layers[0].cross_attn.k_proj.weight.grad.abs().sum() > 0
    if head.num_stuff_queries:
        assert head.stuff_queries.weight.grad.abs().sum() > 0
    assert model.encoder.layers[0].self_attn.sampling_offsets.weight.grad is not None
    model.eval()
    with torch.no_grad():
        results = predict(model, val_batch(model, cfg))
    assert results[0].pred_panoptic_seg.sem_seg.shape[-2:] == results[0].ori_shape
    assert 'pred_instances' in results[0]


def test_stuff_queries_always_map_to_their_own_class(synthetic_root):
    model, cfg = build_psf(synthetic_root)
    head = model.bbox_head
    torch.manual_seed(1)
    out = dict(thing_cls=torch.randn(2, 20, NUM_THINGS) * 5,
               stuff_cls=torch.randn(2, NUM_STUFF) * 5)
    probs = head.class_logits(out).sigmoid()  # what the fusion head sees
    assert probs.shape == (2, 20 + NUM_STUFF, NUM_THINGS + NUM_STUFF)
    own = NUM_THINGS + torch.arange(NUM_STUFF)
    assert (probs[:, 20:].argmax(-1) == own).all()
    assert (probs[:, 20:].sum(-1) == probs[:, 20 + torch.arange(NUM_STUFF), own]).all()
    assert (probs[:, :20, NUM_THINGS:] == 0).all()
    # training: class-fixed assignment, query j <- stuff class j
    targets = [build_panoptic_targets(_sample(), NUM_THINGS, NUM_STUFF)]
    assignment = head._stuff_assignments(targets, (8, 8), 0.5)[0]
    assert sorted(assignment.query_inds.tolist()) == [0, 1] and (assignment.labels == 0).all()
    # inference: every stuff segment of the panoptic output carries its query's class
    model.eval()
    data = val_batch(model, cfg)
    with torch.no_grad():
        mask_cls, mask_pred = head.predict(**model.forward_transformer(
            model.extract_feat(data['inputs']), data['data_samples']),
            batch_data_samples=data['data_samples'])
    fusion = model.panoptic_fusion_head
    labels = fusion.class_probs(mask_cls[0]).argmax(-1)
    assert (labels[20:] == own).all() and (labels[:20] < NUM_THINGS).all()


def test_instance_mode_and_earlier_mask_layer(synthetic_root):
    model, cfg = build_psf(synthetic_root, {'model.test_cfg.panoptic_on': False,
                                            'model.test_cfg.instance_on': True})
    model.eval()
    data = val_batch(model, cfg)
    assert not model._with_stuff
    with torch.no_grad():
        results = predict(model, data)
        inputs = model.forward_transformer(model.extract_feat(data['inputs']),
                                           data['data_samples'])
        full = model.bbox_head.forward_tensors(**inputs, batch_data_samples=data['data_samples'])
        things_only = model.bbox_head.forward_tensors(
            **inputs, batch_data_samples=data['data_samples'], with_stuff=False)
        model.bbox_head.test_cfg['mask_decoder_layer'] = 1
        first = model.bbox_head.forward_tensors(**inputs,
                                                batch_data_samples=data['data_samples'])
    assert 'pred_panoptic_seg' not in results[0] and 'pred_instances' in results[0]
    assert (results[0].pred_instances.labels < NUM_THINGS).all()
    assert 'stuff_cls' not in things_only[-1] and len(full) == 3 and len(first) == 1
    # without self-attention the thing queries do not see the stuff queries
    torch.testing.assert_close(things_only[-1]['thing_masks'], full[-1]['thing_masks'])
    torch.testing.assert_close(first[0]['thing_cls'], full[0]['thing_cls'])
    torch.testing.assert_close(first[0]['stuff_masks'], full[0]['stuff_masks'])


def test_lambda_things_scales_the_detection_loss(synthetic_root):
    model, cfg = build_psf(synthetic_root)
    data = train_batch(model, cfg)
    inputs = model.forward_transformer(model.extract_feat(data['inputs']), data['data_samples'])
    head = model.bbox_head
    cls, coords = head.location_predictions(inputs['hidden_states'], inputs['references'])
    gts = [build_panoptic_targets(s, NUM_THINGS, NUM_STUFF).things for s in data['data_samples']]
    losses = {}
    for weight in (1.0, 0.25):
        metas = [dict(s.metainfo, thing_loss_weight=weight) for s in data['data_samples']]
        losses[weight] = head.loss_by_feat(cls, coords, None, None, gts, metas)
    for key in ('loss_cls', 'loss_bbox', 'loss_iou'):
        torch.testing.assert_close(losses[0.25][key], 0.25 * losses[1.0][key])


def test_configuration_errors(synthetic_root):
    with pytest.raises(ValueError, match='0 layers'):
        build_psf(synthetic_root, {'model.decoder.num_layers': 0})
    with pytest.raises(ValueError, match='MassCenterL1Cost'):
        build_psf(synthetic_root, {'model.train_cfg.assigner.match_costs': BOX_FREE_COSTS,
                                   'model.train_cfg.mask_assigner.match_costs': BOX_FREE_COSTS})
    with pytest.raises(ValueError, match='num_classes'):
        build_psf(synthetic_root, {'model.bbox_head.num_classes': 13})
    with pytest.raises(ValueError, match='location_target'):
        build_psf(synthetic_root, {'model.bbox_head.location_target': 'points'})


@pytest.mark.parametrize('merge', ['mask_wise', 'pixel_argmax', 'pixel_argmax_prob'])
def test_fusion_head_variants_in_the_psf_config(synthetic_root, merge):
    """Table 7 "(m)" and "(p)" rows; "(p*)" is mmdet's softmax rule, refused for sigmoid."""
    from .test_mask_wise_merging import semantic_via_mmdet
    model, cfg = build_psf(synthetic_root, {'model.test_cfg.merge': merge,
                                            'model.test_cfg.semantic_on': True})
    assert isinstance(model, PanopticSegFormer)
    assert isinstance(model.panoptic_fusion_head, MaskWiseMergingFusionHead)
    model.eval()
    data = val_batch(model, cfg)
    if merge == 'pixel_argmax_prob':
        with pytest.raises(ValueError, match='softmax'), torch.no_grad():
            predict(model, data)
        return
    with torch.no_grad():
        mask_cls, _ = model.bbox_head.predict(**model.forward_transformer(
            model.extract_feat(data['inputs']), data['data_samples']),
            batch_data_samples=data['data_samples'])
    # untrained, every class probability is far under the config's t_cnf (.25) and both
    # maps would be all void: "(p)" keeps the upper half of p_i; "(m)" scores
    # s_i = p_i * mean(m_i[m_i > .5])^2 >= p_i / 4 for a non-empty mask
    probs, labels = mask_cls.sigmoid().max(-1)  # the config's cls_activation
    t_cnf = float(probs.median()) / (1 if merge == 'pixel_argmax' else 4)
    model.panoptic_fusion_head.test_cfg['t_cnf'] = t_cnf
    with torch.no_grad():
        results = predict(model, data)
    void = NUM_THINGS + NUM_STUFF
    for i, result in enumerate(results):
        pan, sem = result.pred_panoptic_seg.sem_seg[0], result.pred_sem_seg.sem_seg[0]
        assert pan.shape == result.ori_shape
        np.testing.assert_array_equal(sem.numpy(), semantic_via_mmdet(pan, void))
        # only classes of queries with p >= t_cnf (s_i <= p_i for "(m)")
        assert set(np.unique(sem.numpy())) - {255} <= set(labels[i][probs[i] >= t_cnf].tolist())
        if merge == 'pixel_argmax':
            assert (pan != void).all()  # some query is kept: every pixel has an owner
        else:
            assert (pan != void).any()


def test_tiny_psf_trains_and_tests_through_the_tools(synthetic_root, tmp_path):
    """tools/train.py, then tools/test.py: its PQ/SQ/RQ are recomputed with panopticapi and
    its mIoU/mAcc with numpy, both from the prediction PNGs it wrote (--panoptic-out)."""
    import json

    import cv2
    from panopticapi.evaluation import pq_compute
    from panopticapi.utils import rgb2id

    from mmmaps.datasets import SYNTHETIC_METAINFO

    from ..conftest import run_tool
    work = str(tmp_path / 'work')
    loaders = ['train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
               'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
               'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']
    run_tool(['tools/train.py', TINY_PSF, '--work-dir', work, '--cfg-options',
              'train_cfg.max_iters=2', 'train_cfg.val_interval=100',
              'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=2'] + loaders,
             synthetic_root)
    prefix = osp.join(work, 'pred')
    # after 2 iterations every class probability is far under t_cnf = .25 (all void):
    # t_cnf 0 makes the maps non-empty
    run_tool(['tools/test.py', TINY_PSF, osp.join(work, 'iter_2.pth'), '--work-dir', work,
              '--panoptic-out', prefix, '--cfg-options', 'model.test_cfg.t_cnf=0.0'] + loaders,
             synthetic_root)
    with open(osp.join(work, 'metrics.json')) as f:
        metrics = json.load(f)
    assert 'coco/segm_mAP' in metrics

    gt_json = osp.join(synthetic_root, 'annotations', 'panoptic_val.json')
    gt_dir = osp.join(synthetic_root, 'annotations', 'panoptic_val')
    pq = pq_compute(gt_json, prefix + '.panoptic.json', gt_dir, prefix + '.panoptic')
    for key in ('PQ', 'SQ', 'RQ'):
        assert metrics[f'coco_panoptic/{key}'] == pytest.approx(100 * pq['All'][key.lower()])

    with open(gt_json) as f:
        gt = json.load(f)
    with open(prefix + '.panoptic.json') as f:
        preds = {ann['image_id']: ann for ann in json.load(f)['annotations']}
    assert sorted(preds) == sorted(ann['image_id'] for ann in gt['annotations'])
    classes = list(SYNTHETIC_METAINFO['classes'])
    label_of = {cat['id']: classes.index(cat['name']) for cat in gt['categories']}

    def semantic(folder, ann):
        ids = rgb2id(cv2.imread(osp.join(folder, ann['file_name']))[..., ::-1])
        sem = np.full(ids.shape, 255)
        for segment in ann['segments_info']:
            sem[ids == segment['id']] = label_of[segment['category_id']]
        return sem

    n = len(classes)
    inter, gt_area, pred_area = np.zeros(n), np.zeros(n), np.zeros(n)
    for ann in gt['annotations']:
        target = semantic(gt_dir, ann)
        pred = semantic(prefix + '.panoptic', preds[ann['image_id']])
        assert (pred != 255).any()  # a prediction in every image
        target, pred = target[target != 255], pred[target != 255]
        inter += np.bincount(target[target == pred], minlength=n)
        gt_area += np.bincount(target, minlength=n)
        pred_area += np.bincount(pred[pred != 255], minlength=n)
    # void predictions are misses (PanopticSemSegMetric); the metric rounds to 0.01
    union = pred_area + gt_area - inter
    assert metrics['semseg/mIoU'] == pytest.approx(
        100 * (inter[union > 0] / union[union > 0]).mean(), abs=0.006)
    assert metrics['semseg/mAcc'] == pytest.approx(
        100 * (inter[gt_area > 0] / gt_area[gt_area > 0]).mean(), abs=0.006)


ABLATIONS = osp.join(REPO_ROOT, 'configs', 'panoptic_segformer', 'ablations')


@pytest.mark.parametrize('name', ['table6-box-free', 'table8-joint-matching'])
def test_r50_ablation_configs_run_a_training_step(synthetic_root, name):
    """The paper-size box-free and joint-matching configs (ResNet-50, 300/353 queries, 6+6+6
    layers) train one step on two small synthetic images (random weights: the ImageNet
    checkpoint is replaced by mmdet's own initialisation, whose zero-initialised residual
    BNs keep the frozen-BN ResNet-50 finite)."""
    cfg = load_config_with_root(osp.join(ABLATIONS, f'panoptic-segformer_r50_coco_{name}.py'),
                                synthetic_root, {'model.backbone.init_cfg': None})
    tiny = load_config_with_root(TINY_PSF, synthetic_root)
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    head = model.bbox_head
    if name == 'table6-box-free':
        assert head.location_target == 'mass_center' and head.reg_branches[0][-1].out_features == 2
    else:
        assert not head.query_decoupling and model.num_queries == 353
        assert head.num_stuff_queries == 0 and head.num_classes == 133
    dataset = DATASETS.build(tiny.train_dataloader.dataset)  # 64x64 synthetic images
    data = model.data_preprocessor(pseudo_collate([dataset[i] for i in range(2)]), True)
    model.train()
    losses = model(**data, mode='loss')
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert head.mask_decoder.layers[-1].cross_attn.q_proj.weight.grad.abs().sum() > 0
