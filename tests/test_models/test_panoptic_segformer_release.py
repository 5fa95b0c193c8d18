"""Panoptic SegFormer as the authors' release builds it, and the loss guards of both variants."""
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.dataset import pseudo_collate
from mmengine.structures import InstanceData, PixelData

from mmdet.registry import MODELS, TASK_UTILS
from mmdet.utils import register_all_modules

from mmmaps.models import LevelwiseAttentionMapToMask, release_thing_queries

from ..conftest import REPO_ROOT, load_config_with_root
from .test_panoptic_segformer import NUM_STUFF, NUM_THINGS, build_psf, predict, train_batch

PSF_DIR = osp.join(REPO_ROOT, 'configs', 'panoptic_segformer')
TINY_RELEASE = osp.join(PSF_DIR, 'panoptic-segformer-release_r18_synthetic.py')


def build_release(root, options=None):
    cfg = load_config_with_root(TINY_RELEASE, root, options)
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model, cfg


def _release_block(d, h, ffn, self_attn):
    """Parameters of one release mask-decoder block, counted by hand from the release's
    modules: q/k/v/proj with bias, the per-level FCs (h x h + h, 3 levels), the fusing FC
    (3h + 1), the GELU MLP (d -> ffn -> d), two LayerNorms; self-attention adds qkv + proj
    and a third LayerNorm."""
    count = 4 * (d * d + d) + 3 * (h * h + h) + 3 * h + 1 + (d * ffn + ffn + ffn * d + d) + 4 * d
    if self_attn:
        count += 3 * d * d + 3 * d + d * d + d + 2 * d
    return count


def test_release_r50_parameter_count():
    cfg = load_config_with_root(
        osp.join(PSF_DIR, 'panoptic-segformer-release_r50_8xb1-24e_coco-panoptic.py'), '')
    cfg.model.backbone.init_cfg = None
    register_all_modules()
    model = MODELS.build(cfg.model)
    total = sum(p.numel() for p in model.parameters())
    assert abs(total - 51.3e6) / 51.3e6 < 0.01, total  # hand count of the release
    tail = 2 * (256 * 256 + 256) + 3 * 72 + 25  # q, k and the mask head
    head = model.bbox_head
    assert sum(p.numel() for p in head.thing_mask_decoder.parameters()) == \
        4 * _release_block(256, 8, 1024, False) + tail
    assert sum(p.numel() for p in head.stuff_mask_decoder.parameters()) == \
        6 * _release_block(256, 8, 1024, True) + tail
    # the extra level: a 3x3 stride-2 convolution on C5 (2048 -> 256, no bias before the
    # norm) with GroupNorm
    paper = load_config_with_root(
        osp.join(PSF_DIR, 'panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'), '')
    paper.model.backbone.init_cfg = None
    paper_neck = MODELS.build(paper.model.neck)
    assert sum(p.numel() for p in model.neck.parameters()) - \
        sum(p.numel() for p in paper_neck.parameters()) == 2048 * 256 * 9 + 2 * 256


def test_levelwise_mask_head_against_hand_computation():
    torch.manual_seed(0)
    head = LevelwiseAttentionMapToMask(num_heads=2, num_levels=2)
    shapes = [(4, 6), (2, 3)]
    attn = torch.randn(1, 3, 2, 4 * 6 + 2 * 3)
    out = head(attn, shapes)
    fc1, fc2 = head.level_fcs[0][0], head.level_fcs[1][0]
    for q in range(3):
        # level 1: per token, mix the 2 heads, ReLU
        l1 = torch.relu(torch.einsum('oh,hl->ol', fc1.weight, attn[0, q, :, :24])
                        + fc1.bias[:, None]).reshape(2, 4, 6)
        l2 = torch.relu(torch.einsum('oh,hl->ol', fc2.weight, attn[0, q, :, 24:])
                        + fc2.bias[:, None]).reshape(1, 2, 2, 3)
        l2 = F.interpolate(l2, size=(4, 6), mode='bilinear', align_corners=False)[0]
        stacked = torch.cat([l1, l2])  # (4, 4, 6)
        w, b = head.fc[0].weight[0], head.fc[0].bias
        expected = torch.relu((stacked * w[:, None, None]).sum(0) + b)
        torch.testing.assert_close(out[0, q], expected, rtol=1e-5, atol=1e-6)
    assert (out >= 0).all()
    assert sum(p.numel() for p in LevelwiseAttentionMapToMask(8, 3).parameters()) == 241


def test_release_filter_takes_distinct_queries_per_round():
    """2 objects, 6 queries: min(3, 5 // 2) = 2 rounds; round 1 takes the closest query of
    each object, round 2 the next closest (an L1 centre cost makes the matching obvious)."""
    assigner = TASK_UTILS.build(dict(type='HungarianAssigner', match_costs=[
        dict(type='MassCenterL1Cost', weight=1.0)]))
    centers = torch.tensor([[0.1, 0.1], [0.9, 0.9], [0.12, 0.1], [0.5, 0.5], [0.88, 0.9],
                            [0.3, 0.3]])
    preds = InstanceData(scores=torch.zeros(6, 3), centers=centers)
    gts = InstanceData(labels=torch.tensor([0, 1]),
                       centers=torch.tensor([[0.1, 0.1], [0.9, 0.9]]))
    keep = release_thing_queries(preds, gts, {}, assigner, max_rounds=3, max_queries=5)
    assert set(keep[:2].tolist()) == {0, 1} and set(keep[2:].tolist()) == {2, 4}
    # 3 rounds when 100 // 2 allows it
    assert len(release_thing_queries(preds, gts, {}, assigner, 3, 100)) == 6
    # no things: no thing query enters the mask decoder
    empty = InstanceData(labels=torch.zeros(0, dtype=torch.long), centers=torch.zeros(0, 2))
    assert len(release_thing_queries(preds, empty, {}, assigner, 3, 100)) == 0


def test_tiny_release_trains_a_step_and_predicts(synthetic_root):
    model, cfg = build_release(synthetic_root)
    data = train_batch(model, cfg)
    model.train()
    losses = model(**data, mode='loss')
    head = model.bbox_head
    # Dice on every thing layer + tail (2 + 1) and stuff layer + tail (3 + 1), stuff
    # classification on the 3 stuff layers, the location decoder's detection losses
    assert {'loss_dice', 'm0.loss_dice', 'm1.loss_dice', 'loss_stuff_dice', 'm2.loss_stuff_dice',
            'm2.loss_stuff_cls', 'loc_loss_cls', 'loc_loss_bbox'} <= set(losses), sorted(losses)
    assert 'loss_stuff_cls' not in losses  # the tail has no query to classify
    # the thing decoder's class/box branches are in the graph with weight 0 (release)
    assert losses['t0.loss_cls'] == 0 and losses['t1.loss_bbox'] == 0
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    assert head.thing_mask_decoder.tail.mask_head.fc[0].weight.grad.abs().sum() > 0
    assert head.stuff_mask_decoder.layers[0].self_attn.attn.in_proj_weight.grad.abs().sum() > 0
    assert head.stuff_cls_branches[-1].weight.grad.abs().sum() > 0
    # the location decoder's last layer is trained through the kept queries' masks
    assert model.decoder.layers[-1].ffn.layers[1].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        results = predict(model, val_batch_of(model, cfg))
    assert results[0].pred_panoptic_seg.sem_seg.shape[-2:] == results[0].ori_shape
    assert len(results[0].pred_instances) > 0


def val_batch_of(model, cfg):
    from .test_panoptic_segformer import val_batch
    return val_batch(model, cfg)


@pytest.mark.parametrize('builder', [build_psf, build_release], ids=['paper', 'release'])
def test_a_batch_without_stuff_still_trains_every_stuff_query(synthetic_root, builder):
    """Crops without stuff: each stuff query still gets a classification loss as a
    negative (lambda_stuff > 0), so its embedding receives a gradient."""
    model, cfg = builder(synthetic_root)
    data = train_batch(model, cfg)
    for sample in data['data_samples']:
        sem = sample.gt_sem_seg.sem_seg.clone()
        sem[sem >= NUM_THINGS] = 255  # stuff pixels -> void
        sample.gt_sem_seg = PixelData(sem_seg=sem)
    model.train()
    losses = model(**data, mode='loss')
    stuff_cls = [v for k, v in losses.items() if k.endswith('loss_stuff_cls')]
    assert stuff_cls and all(v > 0 for v in stuff_cls)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    grad = model.bbox_head.stuff_queries.weight.grad
    assert (grad.abs().sum(1) > 0).all() and grad.shape[0] == NUM_STUFF


def test_positional_embeddings_enter_where_configured():
    """``query_pos``/``memory_pos`` of the mask decoder: None/False ignore the embeddings;
    'input' adds the query embedding to every layer's input (the release's stuff decoder),
    'attention' only to the attention queries (DETR)."""
    from mmmaps.models import AttentionMaskDecoder
    torch.manual_seed(0)
    layer = dict(embed_dims=16, num_heads=2, feedforward_channels=32, dropout=0.0)
    shapes = torch.tensor([[4, 4], [2, 2]])
    query, memory = torch.randn(1, 3, 16), torch.randn(1, 20, 16)
    pos, mem_pos = torch.randn(1, 3, 16), torch.randn(1, 20, 16)

    def run(decoder, q_pos, m_pos):
        return [o.masks for o in decoder(query, q_pos, memory, m_pos, None, shapes)]

    none = AttentionMaskDecoder(2, layer, num_levels=2, query_pos=None, memory_pos=False,
                                tail=True).eval()
    for a, b in zip(run(none, pos, mem_pos), run(none, pos * 3, mem_pos * 3)):
        torch.testing.assert_close(a, b)
    for mode in ('input', 'attention'):
        decoder = AttentionMaskDecoder(2, layer, num_levels=2, query_pos=mode,
                                       memory_pos=True).eval()
        first_layer = decoder.layers[0]
        if mode == 'input':  # the layer sees query + pos and no separate embedding
            refined, logits = first_layer(query + pos, None, memory, mem_pos)
        else:  # the layer's attention queries get the embedding, the residual does not
            refined, logits = first_layer(query, pos, memory, mem_pos)
        out = decoder(query, pos, memory, mem_pos, None, shapes)[0]
        torch.testing.assert_close(out.query, refined)
        torch.testing.assert_close(out.masks, decoder.mask_heads[0](logits, [(4, 4), (2, 2)]))
        assert not torch.allclose(run(decoder, pos, mem_pos)[0], run(decoder, pos * 3, mem_pos)[0])
    with pytest.raises(ValueError, match='query_pos'):
        AttentionMaskDecoder(1, layer, num_levels=2, query_pos='keys')


@pytest.mark.parametrize('config', [
    'panoptic-segformer_r18_synthetic.py', 'panoptic-segformer-release_r18_synthetic.py',
    'panoptic-segformer_r50_8xb1-24e_coco-panoptic.py'])
def test_stuff_only_images_stay_in_training(synthetic_root, tmp_path, config):
    """An image whose segments are all stuff is kept in the training set (the release's
    filter_empty_gt=False; mmdet's COCO config drops it) and trains a step."""
    import json
    from mmdet.registry import DATASETS
    with open(osp.join(synthetic_root, 'annotations', 'panoptic_train.json')) as f:
        coco = json.load(f)
    thing_ids = {c['id'] for c in coco['categories'] if c['isthing']}
    first = coco['annotations'][0]
    first['segments_info'] = [s for s in first['segments_info']
                              if s['category_id'] not in thing_ids]
    assert first['segments_info'], 'the fabricated image needs stuff'
    ann_file = tmp_path / 'stuff_only.json'
    ann_file.write_text(json.dumps(coco))
    cfg = load_config_with_root(osp.join(PSF_DIR, config), synthetic_root)
    assert cfg.train_dataloader.dataset.filter_cfg.filter_empty_gt is False
    tiny = load_config_with_root(osp.join(PSF_DIR, 'panoptic-segformer_r18_synthetic.py'),
                                 synthetic_root)
    dataset_cfg = dict(tiny.train_dataloader.dataset, ann_file=str(ann_file),
                       filter_cfg=cfg.train_dataloader.dataset.filter_cfg)
    register_all_modules()
    dataset = DATASETS.build(dataset_cfg)
    assert len(dataset) == len(coco['images'])
    dropped = DATASETS.build(dict(dataset_cfg, filter_cfg=dict(filter_empty_gt=True)))
    assert len(dropped) == len(coco['images']) - 1  # mmdet's filter would drop it
    if config.endswith('_synthetic.py'):
        builder = build_release if 'release' in config else build_psf
        model, _ = builder(synthetic_root)
        ids = [dataset.get_data_info(i)['img_id'] for i in range(len(dataset))]
        sample = dataset[ids.index(first['image_id'])]
        data = model.data_preprocessor(pseudo_collate([sample]), True)
        assert len(data['data_samples'][0].gt_instances) == 0
        model.train()
        losses = model(**data, mode='loss')
        total = sum(v for k, v in losses.items() if 'loss' in k)
        assert torch.isfinite(total) and total > 0
        total.backward()
