"""MaskWiseMergingFusionHead against hand-built cases and a per-mask Python reference."""
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

from mmdet.evaluation.functional import INSTANCE_OFFSET
from mmdet.models.seg_heads.panoptic_fusion_heads import MaskFormerFusionHead
from mmdet.registry import DATASETS, MODELS
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
    pred = torch.randn(q, h, w, generator=gen) * 2 + torch.randn(q, 1, 1, generator=gen) * 2
    head = make_head(t_cnf=0.05, t_keep=0.5)
    pan = head.panoptic_postprocess(cls, pred).sem_seg[0].numpy()
    prob = pred.sigmoid()
    scores, labels = head.confidence(cls, prob)
    expected = reference_merge(scores.numpy(), labels.numpy(), (prob > 0.5).numpy(), 0.05, 0.5)
    np.testing.assert_array_equal(pan, expected)
    # every pixel has exactly one segment id; each thing id is one connected decision
    assert pan.shape == (h, w)
    assert (pan != VOID).any()


def test_confidence_is_eq6():
    head = make_head(alpha=1.0, beta=2.0)
    cls = softmax_logits([(1, .5)])
    pred = torch.tensor([[[2.0, -1.0], [0.5, 3.0]]])
    scores, labels = head.confidence(cls, pred.sigmoid())
    prob = pred.sigmoid()[0]
    kept = prob[prob > 0.5]
    torch.testing.assert_close(scores[0], 0.5 * kept.mean() ** 2)
    assert labels.tolist() == [1]


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
    # "(p*)" is exactly mmdet's MaskFormer post-processing
    gen = torch.Generator().manual_seed(0)
    cls, pred = torch.randn(10, VOID + 1, generator=gen), torch.randn(10, 12, 12, generator=gen)
    cfg = dict(object_mask_thr=0.3, iou_thr=0.5)
    ours = make_head(merge='pixel_argmax_prob', **cfg).panoptic_postprocess(cls, pred)
    theirs = MaskFormerFusionHead(num_things_classes=THINGS, num_stuff_classes=STUFF,
                                  test_cfg=cfg).panoptic_postprocess(cls, pred)
    assert torch.equal(ours.sem_seg, theirs.sem_seg)
    # "(p)": disjoint confident masks are painted as they are
    argmax = make_head(merge='pixel_argmax').panoptic_postprocess(
        softmax_logits([(1, .99), (3, .99)]), mask_logits(masks)).sem_seg[0]
    assert (argmax[:, :4] == 1 + INSTANCE_OFFSET).all() and (argmax[:, 4:] == 3).all()
    with pytest.raises(ValueError, match='merge'):
        make_head(merge='nms').panoptic_postprocess(cls, pred)


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
        known = pan != 13
        assert torch.equal(sem[known], (pan[known] % INSTANCE_OFFSET).long())
        assert (sem[~known] == 255).all()
