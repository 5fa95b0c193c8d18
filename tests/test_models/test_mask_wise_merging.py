"""MaskWiseMergingFusionHead against hand-built cases and a per-mask numpy reference."""
import os.path as osp

import mmcv
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from panopticapi.utils import rgb2id

from mmdet.evaluation import CocoPanopticMetric
from mmdet.evaluation.functional import INSTANCE_OFFSET
from mmdet.registry import DATASETS, MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules

from mmmaps.models import MaskWiseMergingFusionHead

from ..conftest import TINY_M2F

THINGS, STUFF = 2, 2  # classes 0, 1 things; 2, 3 stuff; void = 4
VOID = THINGS + STUFF
BIG = 20.0


def make_head(**test_cfg):
    return MaskWiseMergingFusionHead(num_things_classes=THINGS, num_stuff_classes=STUFF,
                                     test_cfg=test_cfg)


def softmax_logits(labels_probs):
    """Class logits (Q, C + 1) whose softmax gives prob p to the label, rest to no-object."""
    rows = []
    for label, p in labels_probs:
        row = torch.full((VOID + 1,), -BIG)
        row[label] = float(np.log(p))
        row[VOID] = float(np.log(1 - p)) if p < 1 else -BIG
        rows.append(row)
    return torch.stack(rows)


def mask_logits(masks):
    return torch.stack([torch.where(torch.as_tensor(m, dtype=torch.bool),
                                    torch.tensor(BIG), torch.tensor(-BIG)) for m in masks])


def prob_logits(probs):
    """Mask logits (Q, H, W) whose sigmoid are the given probabilities."""
    return torch.logit(torch.tensor(probs, dtype=torch.float64)).float()


def semantic_via_mmdet(pan, num_classes):
    """The semantic map (void 255) of a panoptic map (H, W) as the PQ evaluation sees it:
    mmdet's ``CocoPanopticMetric`` turns it into segments_info and a PNG; the PNG is read
    back with panopticapi's ``rgb2id``."""
    metric = CocoPanopticMetric()
    metric.dataset_meta = dict(classes=tuple(str(c) for c in range(num_classes)))
    result = metric._parse_predictions(
        dict(pred_panoptic_seg=dict(sem_seg=pan[None].clone().cpu())), img_id=0,
        segm_file='pred.png')
    ids = rgb2id(mmcv.imread(osp.join(metric.seg_out_dir, 'pred.png'), channel_order='rgb'))
    sem = np.full(ids.shape, 255)
    for segment in result['segments_info']:
        sem[ids == segment['id']] = segment['category_id']
    return sem


def box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_hand_built_masks():
    h, w = 10, 10
    masks = [
        box(h, w, 0, 4, 0, 4),  # q0 thing 0, p .9  -> painted first (instance 1)
        box(h, w, 2, 6, 2, 6),  # q1 thing 1, p .8  -> keeps 12/16 = .75 >= .6 (instance 2)
        box(h, w, 0, 4, 1, 5),  # q2 thing 0, p .7  -> keeps 2/16 < .6: dropped
        box(h, w, 6, 10, 0, 5),  # q3 stuff 2, p .95
        box(h, w, 6, 10, 5, 10),  # q4 stuff 2, p .85 -> same class: one segment with q3
        box(h, w, 0, 2, 7, 10),  # q5 stuff 3, p .2  -> s = .2 < t_cnf: dropped
    ]
    cls = softmax_logits([(0, .9), (1, .8), (0, .7), (2, .95), (2, .85), (3, .2)])
    pan = make_head().panoptic_postprocess(cls, mask_logits(masks)).sem_seg[0].numpy()
    expected = np.full((h, w), VOID)
    expected[masks[0]] = 0 + 1 * INSTANCE_OFFSET
    expected[masks[1] & ~masks[0]] = 1 + 2 * INSTANCE_OFFSET
    expected[masks[3] | masks[4]] = 2
    np.testing.assert_array_equal(pan, expected)
    # the overlap went to the higher score; stuff class 2 is a single segment
    assert pan[3, 3] == INSTANCE_OFFSET
    assert len({v for v in np.unique(pan) if v % INSTANCE_OFFSET == 2}) == 1
    # a lower t_keep lets q2 keep its two unclaimed pixels as a third instance
    pan = make_head(t_keep=0.1).panoptic_postprocess(cls, mask_logits(masks)).sem_seg[0]
    assert (pan == 0 + 3 * INSTANCE_OFFSET).sum() == 2
    # per-group thresholds: stuff t_cnf 0.1 keeps q5
    pan = make_head(t_cnf=dict(thing=0.25, stuff=0.1)).panoptic_postprocess(
        cls, mask_logits(masks)).sem_seg[0]
    assert (pan == 3).sum() == 6


def reference_scores(cls, pred):
    """Eq. 6 with numpy: softmax classes (last column no-object), sigmoid masks."""
    exp = np.exp(cls - cls.max(1, keepdims=True))
    probs = (exp / exp.sum(1, keepdims=True))[:, :-1]
    masks = 1 / (1 + np.exp(-pred.astype(np.float64)))
    binary = masks > 0.5
    mask_scores = np.array([m[b].mean() if b.any() else 0.0 for m, b in zip(masks, binary)])
    return probs.max(1) * mask_scores**2, probs.argmax(1), binary


def reference_merge(scores, labels, masks, t_cnf, t_keep):
    """Algorithm 1 written plainly, one mask at a time, with numpy."""
    h, w = masks.shape[1:]
    out = np.full((h, w), VOID, np.int64)
    painted = np.zeros((h, w), bool)
    instance = 0
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if scores[i] < t_cnf:
            continue
        area = masks[i].sum()
        new = masks[i] & ~painted
        if area == 0 or new.sum() < t_keep * area:
            continue
        painted |= new
        if labels[i] < THINGS:
            instance += 1
            out[new] = labels[i] + instance * INSTANCE_OFFSET
        else:
            out[new] = labels[i]
    return out


@pytest.mark.parametrize('seed', range(5))
def test_matches_reference_on_random_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    q, h, w = 30, 24, 20
    cls = torch.randn(q, VOID + 1, generator=gen) * 3
    # blobs: low-resolution noise, upsampled, mostly negative, so masks overlap partly
    low = torch.randn(q, 1, 6, 5, generator=gen) * 4 - 2
    pred = F.interpolate(low, size=(h, w), mode='bilinear', align_corners=False)[:, 0]
    pred = pred + torch.randn(q, h, w, generator=gen) * 0.5
    pan = make_head(t_cnf=0.05, t_keep=0.5).panoptic_postprocess(cls, pred).sem_seg[0].numpy()
    scores, labels, binary = reference_scores(cls.double().numpy(), pred.numpy())
    # no score within float32 rounding of the threshold, so float64 decides the same way
    assert np.abs(scores - 0.05).min() > 1e-5
    expected = reference_merge(scores, labels, binary, 0.05, 0.5)
    np.testing.assert_array_equal(pan, expected)
    assert len(np.unique(pan)) > 3  # several segments, not an all-void or one-mask case


@pytest.mark.parametrize('alpha,beta,s', [(1.0, 2.0, 0.33506), (2.0, 1.0, 0.20465)])
def test_confidence_is_eq6(alpha, beta, s):
    """One query (class prob .5) with mask probabilities sigmoid(2), sigmoid(.5),
    sigmoid(3) above 0.5 and sigmoid(-1) below: mean(m[m > .5]) = 0.81861, so
    s = .5^alpha * 0.81861^beta, hand-computed; the query survives t_cnf just under s
    (painting its three pixels) and is dropped just over it."""
    cls = softmax_logits([(1, .5)])
    pred = torch.tensor([[[2.0, -1.0], [0.5, 3.0]]])
    thing = 1 + INSTANCE_OFFSET
    for t_cnf, expected in ((s - 1e-4, [[thing, VOID], [thing, thing]]),
                            (s + 1e-4, [[VOID, VOID], [VOID, VOID]])):
        head = make_head(alpha=alpha, beta=beta, t_cnf=t_cnf)
        pan = head.panoptic_postprocess(cls, pred).sem_seg[0].numpy()
        np.testing.assert_array_equal(pan, expected)


def test_empty_inputs_give_void():
    head = make_head()
    empty = head.panoptic_postprocess(torch.zeros(0, VOID + 1), torch.zeros(0, 7, 9))
    assert (empty.sem_seg == VOID).all() and empty.sem_seg.shape == (1, 7, 9)
    cls = softmax_logits([(0, .99), (2, .99)])
    blank = head.panoptic_postprocess(cls, torch.full((2, 7, 9), -BIG))
    assert (blank.sem_seg == VOID).all()
    ins = head.instance_postprocess(torch.zeros(0, VOID + 1), torch.zeros(0, 7, 9))
    assert len(ins) == 0


def test_sigmoid_scores_and_merge_variants():
    masks = [box(8, 8, 0, 8, 0, 4), box(8, 8, 0, 8, 4, 8)]
    sig = torch.full((2, VOID), -BIG)
    sig[0, 1], sig[1, 3] = BIG, BIG  # Panoptic SegFormer style: one sigmoid per class
    pan = make_head(cls_activation='sigmoid').panoptic_postprocess(sig, mask_logits(masks))
    assert (pan.sem_seg[0, :, :4] == 1 + INSTANCE_OFFSET).all()
    assert (pan.sem_seg[0, :, 4:] == 3).all()
    with pytest.raises(ValueError, match='columns'):
        make_head().panoptic_postprocess(sig, mask_logits(masks))
    # "(p)" with sigmoid classes: disjoint confident masks are painted as they are
    argmax = make_head(merge='pixel_argmax', cls_activation='sigmoid').panoptic_postprocess(
        sig, mask_logits(masks)).sem_seg[0]
    assert (argmax[:, :4] == 1 + INSTANCE_OFFSET).all() and (argmax[:, 4:] == 3).all()
    with pytest.raises(ValueError, match='softmax'):
        make_head(merge='pixel_argmax_prob', cls_activation='sigmoid').panoptic_postprocess(
            sig, mask_logits(masks))
    with pytest.raises(ValueError, match='merge'):
        make_head(merge='nms').panoptic_postprocess(sig, mask_logits(masks))


def test_pixel_argmax_prob_is_mmdets_rule():
    """"(p*)" on a 2x4 case: q0 thing 0 (p .95) with mask prob .7 everywhere, q1 stuff 2
    (p .82) with .8 on the right half, .1 on the left. p x m: .665 beats .656 on the
    right, so q0 takes all 8 pixels (8/8 of its m >= .5 area, over iou_thr .8); "(p)"
    compares .7 with .8 and gives the right half to q1."""
    cls = softmax_logits([(0, .95), (2, .82)])
    pred = prob_logits([[[.7] * 4] * 2, [[.1, .1, .8, .8]] * 2])
    cfg = dict(object_mask_thr=0.8, iou_thr=0.8)
    prob = make_head(merge='pixel_argmax_prob', **cfg).panoptic_postprocess(cls, pred)
    np.testing.assert_array_equal(prob.sem_seg[0].numpy(), np.full((2, 4), INSTANCE_OFFSET))
    argmax = make_head(merge='pixel_argmax').panoptic_postprocess(cls, pred)
    np.testing.assert_array_equal(argmax.sem_seg[0].numpy(),
                                  [[INSTANCE_OFFSET] * 2 + [2, 2]] * 2)
    # with .95 on the right q1 wins it (.779); q0 keeps 4 of its 8 pixels, under
    # iou_thr .8, so mmdet drops it and the left half is void
    pred = prob_logits([[[.7] * 4] * 2, [[.1, .1, .95, .95]] * 2])
    prob = make_head(merge='pixel_argmax_prob', **cfg).panoptic_postprocess(cls, pred)
    np.testing.assert_array_equal(prob.sem_seg[0].numpy(), [[VOID, VOID, 2, 2]] * 2)


# 4x4 mask probabilities of the pixel-argmax case
P_LOW = [[.4] * 4, [.4] * 4, [.4, .4, .4, .7], [.4, .4, .4, .7]]  # q0 thing 0, p .6
P_TOP = [[.8] * 4, [.8] * 4, [.3] * 4, [.3] * 4]  # q1 thing 0, p .9
P_STUFF = [[.1] * 4, [.1] * 4, [.45, .45, .1, .1], [.45, .45, .1, .1]]  # q2 stuff 2, p .8
P_ALL = [[.99] * 4] * 4  # q3 thing 1, p .2: under t_cnf


def test_pixel_argmax_is_detrs_rule():
    """"(p)": queries with p >= t_cnf kept, every pixel to the largest mask probability,
    no 0.5 threshold and no t_keep; instance ids by decreasing p."""
    cls = softmax_logits([(0, .6), (0, .9), (2, .8), (1, .2)])
    pred = prob_logits([P_LOW, P_TOP, P_STUFF, P_ALL])
    # q1 (p .9) is thing instance 1 and q0 (p .6) instance 2, whatever their query order;
    # the bottom-left pixels go to q2 at .45 although no mask there reaches 0.5, and q2
    # counts although its Eq. 6 score is 0 (no pixel over 0.5)
    first, second = 0 + INSTANCE_OFFSET, 0 + 2 * INSTANCE_OFFSET
    expected = [[first] * 4, [first] * 4, [2, 2, second, second], [2, 2, second, second]]
    pan = make_head(merge='pixel_argmax').panoptic_postprocess(cls, pred).sem_seg[0]
    np.testing.assert_array_equal(pan.numpy(), expected)
    # per-group t_cnf: stuff needs .85, so q2 is out and q0 (.4 > .3) takes its pixels
    pan = make_head(merge='pixel_argmax', t_cnf=dict(thing=.25, stuff=.85)).panoptic_postprocess(
        cls, pred).sem_seg[0]
    np.testing.assert_array_equal(pan.numpy(), [[first] * 4, [first] * 4, [second] * 4,
                                                [second] * 4])
    # t_cnf .1 keeps q3 (thing 1, .99 everywhere): it takes every pixel, the one instance
    pan = make_head(merge='pixel_argmax', t_cnf=.1).panoptic_postprocess(cls, pred).sem_seg[0]
    np.testing.assert_array_equal(pan.numpy(), np.full((4, 4), 1 + INSTANCE_OFFSET))
    # nothing kept: all void
    pan = make_head(merge='pixel_argmax', t_cnf=.95).panoptic_postprocess(cls, pred).sem_seg[0]
    np.testing.assert_array_equal(pan.numpy(), np.full((4, 4), VOID))
    # equal mask probabilities go to the larger class probability
    tie = make_head(merge='pixel_argmax').panoptic_postprocess(
        softmax_logits([(0, .7), (1, .9)]), mask_logits([box(3, 3, 0, 3, 0, 3)] * 2))
    np.testing.assert_array_equal(tie.sem_seg[0].numpy(), np.full((3, 3), 1 + INSTANCE_OFFSET))


def identity_case():
    """q0 thing 0 (p .2) with mask values 1.5 on the top-left 2x2 box, .2 elsewhere;
    q1 stuff 3 (p .9) with .3 on that box and .6 elsewhere (4x4)."""
    q0 = np.full((4, 4), .2, np.float32)
    q0[:2, :2] = 1.5
    q1 = np.full((4, 4), .6, np.float32)
    q1[:2, :2] = .3
    return softmax_logits([(0, .2), (3, .9)]), torch.from_numpy(np.stack([q0, q1]))


def test_identity_mask_activation():
    cls, values = identity_case()
    in_box = np.zeros((4, 4), bool)
    in_box[:2, :2] = True
    expected = np.where(in_box, INSTANCE_OFFSET, 3)
    # mask-wise: s0 = .2 * 1.5^2 = .45 (over t_cnf although p0 < t_cnf) paints the box
    # first; s1 = .9 * .6^2 = .324 then keeps its 12 pixels
    identity = make_head(mask_activation='identity')
    np.testing.assert_array_equal(identity.panoptic_postprocess(cls, values).sem_seg[0].numpy(),
                                  expected)
    # read as logits, both masks cover all 16 pixels and q0 scores .2 * .617^2 = .076
    np.testing.assert_array_equal(make_head().panoptic_postprocess(cls, values).sem_seg[0],
                                  np.full((4, 4), 3))
    # "(p)" compares the values directly (1.5 > .3 in the box, .6 > .2 elsewhere)
    argmax = make_head(merge='pixel_argmax', mask_activation='identity', t_cnf=.1)
    np.testing.assert_array_equal(argmax.panoptic_postprocess(cls, values).sem_seg[0].numpy(),
                                  expected)
    # instances: the top-2 (query, class) pairs are (q1, 3) and (q0, 0); stuff is dropped;
    # the mask is value > 0.5 (the box), its score .2 * mean(1.5)
    ins = make_head(mask_activation='identity', max_per_image=2).instance_postprocess(
        cls, values)
    assert ins.labels.tolist() == [0]
    np.testing.assert_array_equal(ins.masks[0].numpy(), in_box)
    torch.testing.assert_close(ins.scores, torch.tensor([.2 * 1.5]), rtol=1e-5, atol=1e-6)
    assert ins.bboxes.tolist() == [[0., 0., 2., 2.]]
    with pytest.raises(ValueError, match="mask_activation='sigmoid'"):
        make_head(merge='pixel_argmax_prob', mask_activation='identity').panoptic_postprocess(
            cls, values)
    with pytest.raises(ValueError, match='mask_activation'):
        make_head(mask_activation='relu').panoptic_postprocess(cls, values)
    with pytest.raises(ValueError, match='mask_activation'):
        make_head(mask_activation='relu').instance_postprocess(cls, values)


def test_instance_masks_use_mask_thr():
    """Sigmoid masks .6 on the left column, .8 on the right, .1 between (3x3); p .5."""
    pred = prob_logits([[[.6, .1, .8]] * 3])
    cls = softmax_logits([(1, .5)])
    default = make_head(max_per_image=1).instance_postprocess(cls, pred)
    np.testing.assert_array_equal(default.masks[0].numpy(), [[True, False, True]] * 3)
    torch.testing.assert_close(default.scores, torch.tensor([.5 * .7]), rtol=1e-4, atol=1e-6)
    strict = make_head(max_per_image=1, mask_thr=.7).instance_postprocess(cls, pred)
    np.testing.assert_array_equal(strict.masks[0].numpy(), [[False, False, True]] * 3)
    torch.testing.assert_close(strict.scores, torch.tensor([.5 * .8]), rtol=1e-4, atol=1e-6)
    assert strict.bboxes.tolist() == [[2., 0., 3., 3.]]


def test_semantic_map_from_the_panoptic_map():
    """predict(semantic_on=True) on a padded 4x6 prediction of a 4x4 image: thing 1 in the
    top-left box, stuff 3 in the bottom two rows, the rest void (255 in the semantic map)."""
    cls = softmax_logits([(1, .9), (3, .9)])
    masks = [box(4, 6, 0, 2, 0, 2), box(4, 6, 2, 4, 0, 6)]
    sample = DetDataSample(metainfo=dict(img_shape=(4, 4), ori_shape=(4, 4)))
    head = make_head(semantic_on=True, panoptic_on=False)
    result = head.predict(cls[None], mask_logits(masks)[None], [sample])[0]
    assert set(result) == {'sem_results'}
    np.testing.assert_array_equal(result['sem_results'].sem_seg[0].numpy(),
                                  [[1, 1, 255, 255], [1, 1, 255, 255], [3] * 4, [3] * 4])


def test_instance_slots_over_all_classes_or_things_only():
    """'all' (mmdet): stuff pairs take top-k slots and are dropped; 'things': they cannot."""
    sig = torch.full((4, VOID), -BIG)
    sig[0, 2], sig[1, 3] = 3.0, 2.5  # stuff queries, confident
    sig[2, 0], sig[3, 1] = 1.0, 0.5  # thing queries, less confident
    masks = mask_logits([box(6, 6, 0, 3, 0, 3)] * 4)
    mmdet_like = make_head(cls_activation='sigmoid', max_per_image=2).instance_postprocess(
        sig, masks)
    assert len(mmdet_like) == 0  # both slots went to stuff
    things = make_head(cls_activation='sigmoid', max_per_image=2,
                       instance_classes='things').instance_postprocess(sig, masks)
    assert sorted(things.labels.tolist()) == [0, 1]
    torch.testing.assert_close(things.scores.sort().values, sig[[3, 2], [1, 0]].sigmoid())
    with pytest.raises(ValueError, match='instance_classes'):
        make_head(instance_classes='stuff').instance_postprocess(sig, masks)


def test_in_a_mask2former_config(synthetic_env):
    import mmmaps  # noqa: F401
    register_all_modules()
    cfg = Config.fromfile(TINY_M2F)
    cfg.model.panoptic_fusion_head = dict(type='MaskWiseMergingFusionHead', num_things_classes=7,
                                          num_stuff_classes=6)
    cfg.model.test_cfg.update(merge='mask_wise', t_cnf=0.0, t_keep=0.0)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    batch = pseudo_collate([dataset[0], dataset[1]])
    with torch.no_grad():
        results = model.test_step(batch)
        assert all(s.pred_panoptic_seg.sem_seg.shape[-2:] == s.ori_shape for s in results)
        assert all(len(s.pred_instances) > 0 for s in results)
        # the semantic map derived from the merged panoptic map
        data = model.data_preprocessor(batch, False)
        feats = model.extract_feat(data['inputs'])
        cls, masks = model.panoptic_head.predict(feats, data['data_samples'])
        model.panoptic_fusion_head.test_cfg = dict(cfg.model.test_cfg, semantic_on=True)
        out = model.panoptic_fusion_head.predict(cls, masks, data['data_samples'], rescale=True)
    for result in out:
        pan, sem = result['pan_results'].sem_seg[0], result['sem_results'].sem_seg[0]
        assert (pan != 13).any()
        np.testing.assert_array_equal(sem.numpy(), semantic_via_mmdet(pan, 13))


def test_one_step_resize_is_torch_bilinear_on_the_image_part_of_the_grid():
    """'one_step' (the release): an unpadded image's grid goes to ori_shape in one
    F.interpolate; a padded one's image part (here exactly the top-left half of the grid)
    likewise. 'crop_then_resize' (mmdet): to the padded input, crop, to ori_shape."""
    gen = torch.Generator().manual_seed(0)
    grid = torch.randn(3, 8, 12, generator=gen)
    one_step = make_head(mask_resize='one_step')
    meta = dict(img_shape=(64, 96), batch_input_shape=(64, 96), ori_shape=(50, 75))
    torch.testing.assert_close(
        one_step.resize_masks(grid, meta, rescale=True),
        F.interpolate(grid[None], size=(50, 75), mode='bilinear', align_corners=False)[0])
    padded = dict(img_shape=(32, 48), batch_input_shape=(64, 96), ori_shape=(45, 70))
    torch.testing.assert_close(
        one_step.resize_masks(grid, padded, rescale=True),
        F.interpolate(grid[None, :, :4, :6], size=(45, 70), mode='bilinear',
                      align_corners=False)[0], rtol=1e-5, atol=1e-5)
    assert one_step.resize_masks(grid, padded, rescale=False).shape == (3, 32, 48)
    two_steps = F.interpolate(grid[None], size=(64, 96), mode='bilinear',
                              align_corners=False)[0, :, :32, :48]
    torch.testing.assert_close(
        make_head().resize_masks(grid, padded, rescale=True),
        F.interpolate(two_steps[None], size=(45, 70), mode='bilinear', align_corners=False)[0])
    with pytest.raises(KeyError, match='batch_input_shape'):
        one_step.resize_masks(grid, dict(img_shape=(8, 12), ori_shape=(8, 12)), True)
    with pytest.raises(ValueError, match='mask_resize'):
        make_head(mask_resize='nearest').resize_masks(grid, meta, True)


def test_mask_area_offset_and_exact_keep_threshold():
    """The release's mask score sum(m[m > .5]) / (area + 1): one query (sigmoid p .9) whose
    4 pixels have .8: s = .9 * (3.2 / 5)^2 = .36864 with offset 1, .9 * .8^2 = .576 without
    (hand-computed); t_cnf between the two keeps it only without the offset."""
    cls = torch.full((1, VOID), -BIG)
    cls[0, 1] = float(np.log(.9 / .1))
    pred = torch.zeros(1, 3, 3)
    pred[0, :2, :2] = .8
    for offset, expected_s in ((0, .576), (1, .36864)):
        head = make_head(cls_activation='sigmoid', mask_activation='identity',
                         mask_area_offset=offset)
        scores, _, _ = head._candidates(cls, pred)
        torch.testing.assert_close(scores, torch.tensor([expected_s]), rtol=1e-5, atol=1e-6)
        pan = make_head(cls_activation='sigmoid', mask_activation='identity',
                        mask_area_offset=offset, t_cnf=.5).panoptic_postprocess(cls, pred)
        assert (pan.sem_seg[0, :2, :2] != VOID).all() == (offset == 0)


def test_a_mask_painted_exactly_at_one_minus_t_keep_is_kept():
    """q1 (5 pixels) finds 2 of them painted by q0: 2 / 5 = 1 - 0.6 exactly; the release
    drops a mask only when more than 1 - t_keep is painted (0.4 > 0.4 is false)."""
    q0 = box(4, 5, 0, 1, 0, 2)  # 2 pixels
    q1 = box(4, 5, 0, 1, 0, 5)  # 5 pixels: 2 shared
    cls = softmax_logits([(0, .95), (1, .9)])
    pan = make_head(t_keep=0.6).panoptic_postprocess(cls, mask_logits([q0, q1])).sem_seg[0]
    assert (pan[0, 2:] == 1 + 2 * INSTANCE_OFFSET).all()
    # 3 of q1's 6 pixels painted (0.5 > 0.4): dropped
    q0, q1 = box(4, 5, 0, 1, 0, 3), box(4, 5, 0, 2, 0, 3)
    pan = make_head(t_keep=0.6).panoptic_postprocess(cls, mask_logits([q0, q1])).sem_seg[0]
    assert (pan[1] == VOID).all()


def test_instance_score_of_the_release_is_the_merging_score():
    """'merging': p^alpha * (sum(m[m > .5]) / (area + offset))^beta; here p .5, masks .6 and
    .8 on 3 pixels each: .5 * (4.2 / 7)^2 = .18 (hand-computed)."""
    pred = torch.tensor([[[.6, .1, .8]] * 3])
    cls = softmax_logits([(1, .5)])
    ins = make_head(max_per_image=1, mask_activation='identity', instance_score='merging',
                    mask_area_offset=1).instance_postprocess(cls, pred)
    torch.testing.assert_close(ins.scores, torch.tensor([.18]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='instance_score'):
        make_head(instance_score='max').instance_postprocess(cls, pred)
