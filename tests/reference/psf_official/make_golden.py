"""Run the authors' Panoptic SegFormer (zhiqi-li/Panoptic-SegFormer) and write a golden file.

This script never runs in mmmaps' environment or CI. It runs in the environment of
``setup_venv.sh`` (mmdet 2.12, mmcv-full 1.3.4 without compiled ops, CPU) next to a checkout
of the authors' repository, builds their R50 COCO model exactly as their
``configs/panformer/base.py`` does, fills every tensor of its ``state_dict()`` with the
deterministic rule of :func:`deterministic_tensor` (keyed by the authors' parameter name),
and records what their code computes:

- per image (eval mode, their ``simple_test``): the location decoder's class logits (last
  layer) and boxes (every layer), the (query, class) pairs of their top-100 selection, the
  thing and stuff masks of every mask-decoder layer and of the mask-only tail, the stuff
  scores, the mask-wise merging scores (Eq. 6, in the order their merging visits them; read
  from ``get_bboxes``' locals when it returns) and their panoptic map (COCO category id,
  instance id);
- per image (train mode, every dropout off): each loss term for a fixed panoptic target;
- the ``state_dict()`` keys and shapes of the R50, R101, Swin-L and PVTv2-B5 models of
  their configs, which the converter test enumerates;
- the outputs of small versions of their Swin and PVTv2 backbones (same code as Swin-L and
  PVTv2-B5), which check the backbone key conversion numerically.

mmmaps' test (``tests/test_psf_official_golden.py``) regenerates the same weights from the
key list, converts them with ``tools/model_converters/panoptic_segformer_official.py``, runs
the release config and compares.

    bash tests/reference/psf_official/setup_venv.sh            # once
    git clone https://github.com/zhiqi-li/Panoptic-SegFormer /tmp/psf_official
    git -C /tmp/psf_official checkout cdb9b68
    ~/.cache/mmmaps/psf-official-venv/bin/python tests/reference/psf_official/make_golden.py \
        --repo /tmp/psf_official --out tests/data/psf_official_golden.npz

What had to be stubbed to run their code (nothing of it changes a computation):
``mmcv._ext`` (the compiled ops are not built; on the CPU mmcv's deformable attention takes
its pure-PyTorch path, whose call in mmcv 1.3.4 passes 6 arguments to a 4-argument function:
the script forwards the 4 it takes); the Swin-L config (built for its key list only) merges
into the ResNet backbone of ``base.py`` without ``_delete_``, so the ResNet arguments are
dropped before building it; and the package ``__init__`` files of ``easymd`` (they import the
whole project: datasets, analysis tools, backbones); the modules of the model are imported
one by one from their files.
"""
import os

os.environ['CUDA_VISIBLE_DEVICES'] = ''  # noqa: E402 (before torch: the CPU paths of mmcv)

import argparse
import importlib
import json
import subprocess
import sys
import time
import types
import zlib

import numpy as np

SOURCE_COMMIT = 'cdb9b68'
# the golden images: (img_shape, ori_shape, things in the training target) -- unpadded, not
# multiples of 8 or 32, resized from another original size (the one-step mask resize); the
# second target has more than 100 // 3 things (the query filter's round cap)
IMAGES = (((70, 90), (56, 72), 5), ((84, 68), (105, 85), 40))
NUM_THINGS, NUM_STUFF = 80, 53
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
# margins that keep the comparison away from ties (checked here, on the authors' outputs)
TOPK_MARGIN = 2e-5         # 100th vs 101st (query, class) score
SCORE_MARGIN = 2e-5        # between overlapping segments' scores, and to t_cnf
MAX_ATTEMPTS = 40          # image seeds tried per golden image
KEEP_MARGIN = 0.02         # kept fraction vs 1 - overlap threshold
MASK_MARGIN = 1e-4         # pixels closer than this to 0.5 are flagged, not compared


# ----------------------------------------------------------------------- weights
def deterministic_tensor(name: str, shape) -> np.ndarray:
    """The value of parameter/buffer ``name`` (the authors' key) -- the rule is restated in
    mmmaps' test, which must produce the same numbers:

    ``RandomState(crc32(name))``; ``num_batches_tracked`` 0; ``running_mean`` U(-0.1, 0.1);
    ``running_var`` U(0.5, 1.5); the embeddings (``query_embedding.weight``,
    ``stuff_query.weight``, ``level_embeds``) U(-sqrt(3), sqrt(3)) (unit variance, so that
    the queries differ); other tensors of >= 2 dims U(-b, b) with b = sqrt(3 / fan_in),
    fan_in = prod(shape[1:]) (unit-variance outputs); 1-dim ``weight`` 1 + U(-0.1, 0.1);
    the location decoder's class biases (``bbox_head.cls_branches.*.bias``) -2 + U(-0.1,
    0.1) (sigmoid scores spread below 1, not crowded at it); other 1-dim tensors U(-0.1,
    0.1). float32.
    """
    rng = np.random.RandomState(zlib.crc32(name.encode()))
    last = name.rsplit('.', 1)[-1]
    shape = tuple(int(s) for s in shape)
    if name.endswith(('query_embedding.weight', 'stuff_query.weight', 'level_embeds')):
        return rng.uniform(-np.sqrt(3.0), np.sqrt(3.0), shape).astype(np.float32)
    if last == 'num_batches_tracked':
        return np.zeros(shape, dtype=np.int64)
    if last == 'running_mean':
        return rng.uniform(-0.1, 0.1, shape).astype(np.float32)
    if last == 'running_var':
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if len(shape) >= 2:
        bound = np.sqrt(3.0 / int(np.prod(shape[1:])))
        return rng.uniform(-bound, bound, shape).astype(np.float32)
    if last == 'weight':
        return (1.0 + rng.uniform(-0.1, 0.1, shape)).astype(np.float32)
    if name.startswith('bbox_head.cls_branches.'):
        return (-2.0 + rng.uniform(-0.1, 0.1, shape)).astype(np.float32)
    return rng.uniform(-0.1, 0.1, shape).astype(np.float32)


def make_image(seed: int, shape) -> np.ndarray:
    """A BGR uint8 image of smooth blobs (RandomState(seed))."""
    rng = np.random.RandomState(seed)
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), dtype=np.float32) + rng.uniform(40, 200, 3)
    for _ in range(6):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(6, 0.4 * min(height, width))
        blob = np.exp(-((yy - cy)**2 + (xx - cx)**2) / (2 * radius**2))
        img += blob[..., None] * rng.uniform(-120, 120, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_target(index: int, shape, num_things: int):
    """A fixed panoptic target: (labels (n,), boxes (n, 4) x1y1x2y2, masks (n, H, W) uint8).

    Stuff regions split the image in bands; things are rectangles and discs on top of
    them (the painted last wins, so segments never overlap), or, with many things, a grid
    of small squares. Thing labels < 80."""
    rng = np.random.RandomState(2000 + index)
    height, width = shape
    segments = np.zeros(shape, dtype=np.int64)  # 0 = void
    labels = {}
    stuff = rng.choice(NUM_STUFF, 3, replace=False) + NUM_THINGS
    bounds = np.sort(rng.choice(np.arange(8, height - 8), 2, replace=False))
    rows = np.arange(height)[:, None]
    for sid, (lo, hi) in enumerate(zip([0, *bounds], [*bounds, height]), start=1):
        segments[(rows >= lo) & (rows < hi) & np.ones((1, width), bool)] = sid
        labels[sid] = int(stuff[sid - 1])
    segments[:, :3] = 0  # a void strip
    yy, xx = np.mgrid[0:height, 0:width]
    if num_things > 10:  # a grid of small squares (more objects than 100 // 3)
        cols = int(np.ceil(np.sqrt(num_things * width / height)))
        step_y, step_x = height // int(np.ceil(num_things / cols)), width // cols
        for k in range(num_things):
            y0, x0 = (k // cols) * step_y + 1, (k % cols) * step_x + 4
            sid = 10 + k
            segments[y0:y0 + step_y - 3, x0:x0 + step_x - 3] = sid
            labels[sid] = int(rng.randint(NUM_THINGS))
    for k in range(num_things if num_things <= 10 else 0):
        sid = 10 + k
        cy, cx = rng.randint(6, height - 6), rng.randint(6, width - 6)
        if k % 2:
            r = rng.randint(4, 14)
            region = (yy - cy)**2 + (xx - cx)**2 <= r * r
        else:
            h, w = rng.randint(5, 24), rng.randint(5, 24)
            region = (abs(yy - cy) <= h // 2) & (abs(xx - cx) <= w // 2)
        segments[region] = sid
        labels[sid] = int(rng.randint(NUM_THINGS))
    out_labels, out_boxes, out_masks = [], [], []
    for sid, label in sorted(labels.items()):
        mask = segments == sid
        if mask.sum() < 4:
            continue
        ys, xs = np.nonzero(mask)
        out_labels.append(label)
        out_boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        out_masks.append(mask.astype(np.uint8))
    return (np.array(out_labels, dtype=np.int64), np.array(out_boxes, dtype=np.float32),
            np.stack(out_masks))


# ----------------------------------------------------------------------- their code
def import_authors_code(repo: str):
    """Import the model modules of the authors' ``easymd`` package without its package
    ``__init__`` files, and stub ``mmcv._ext`` (mmcv 1.3.4 built without ops)."""
    ext = types.ModuleType('mmcv._ext')

    def _missing(name):
        if name.startswith('__'):
            raise AttributeError(name)

        def call(*args, **kwargs):
            raise RuntimeError(f'mmcv._ext.{name}: compiled ops are not built (CPU reference)')
        return call

    ext.__getattr__ = _missing
    sys.modules['mmcv._ext'] = ext
    # mmcv 1.3.4's CPU branch passes the CUDA kernel's 6 arguments to the 4-argument
    # PyTorch function (a TypeError on every CPU forward): forward the 4 it takes
    from mmcv.cnn.bricks import transformer as mmcv_transformer
    pytorch_path = mmcv_transformer.multi_scale_deformable_attn_pytorch

    def deformable_attn_cpu(value, shapes, level_start_index, locations, weights, im2col_step):
        return pytorch_path(value, shapes, locations, weights)

    mmcv_transformer.multi_scale_deformable_attn_pytorch = deformable_attn_cpu
    sys.path.insert(0, repo)
    for package in ('easymd', 'easymd.models', 'easymd.models.panformer',
                    'easymd.models.detectors', 'easymd.models.losses', 'easymd.models.utils',
                    'easymd.models.backbones', 'easymd.core', 'easymd.core.bbox',
                    'easymd.core.bbox.match_costs', 'easymd.datasets'):
        module = types.ModuleType(package)
        module.__path__ = [os.path.join(repo, *package.split('.'))]
        sys.modules[package] = module
    utils = sys.modules['easymd.models.utils']
    for name in ('visual', 'transform'):
        utils.__dict__.update(vars(importlib.import_module(f'easymd.models.utils.{name}')))
    importlib.import_module('easymd.core.bbox.match_costs.match_cost')
    importlib.import_module('easymd.models.losses.dice_loss')
    panformer = sys.modules['easymd.models.panformer']
    panformer.DETRHeadv2 = importlib.import_module(
        'easymd.models.panformer.detr_head').DETRHeadv2
    for name in ('deformable_detr', 'mask_head', 'tools', 'panformer_head'):
        importlib.import_module(f'easymd.models.panformer.{name}')
    for name in ('single_stage_panoptic_detector', 'detr_plus', 'panseg'):
        importlib.import_module(f'easymd.models.detectors.{name}')
    for name in ('swin', 'pvt_v2'):
        importlib.import_module(f'easymd.models.backbones.{name}')


def build_model(repo: str, config: str):
    from mmcv import Config
    from mmdet.models import build_detector
    cfg = Config.fromfile(os.path.join(repo, 'configs', 'panformer', config))
    cfg.model.pretrained = None
    if cfg.model.backbone.type == 'SwinTransformer':
        # their Swin-L config merges into base.py's ResNet backbone without _delete_, so the
        # ResNet arguments reach SwinTransformer, which refuses them: drop them
        for key in ('depth', 'num_stages', 'frozen_stages', 'norm_cfg', 'norm_eval', 'style'):
            cfg.model.backbone.pop(key, None)
    return build_detector(cfg.model)


def fill_weights(model):
    import torch
    state = model.state_dict()
    filled = {name: torch.from_numpy(deterministic_tensor(name, tensor.shape))
              for name, tensor in state.items()}
    model.load_state_dict(filled, strict=True)


def key_list(model):
    return [(name, list(tensor.shape)) for name, tensor in model.state_dict().items()]


def img_metas(img_shape, ori_shape, index):
    scale = np.array([img_shape[1] / ori_shape[1], img_shape[0] / ori_shape[0]] * 2,
                     dtype=np.float32)
    return dict(img_shape=(*img_shape, 3), ori_shape=(*ori_shape, 3), pad_shape=(*img_shape, 3),
                batch_input_shape=tuple(img_shape), scale_factor=scale, flip=False,
                filename=f'golden_{index}.png')


def input_tensor(image):
    import mmcv
    import torch
    normalized = mmcv.imnormalize(image, MEAN, STD, to_rgb=True)  # their Normalize
    return torch.from_numpy(normalized.transpose(2, 0, 1).copy())[None]


class Recorder:
    """Forward hooks and a wrapper that keep what the authors' head computes."""

    def __init__(self, head):
        self.seen = {}
        self.hooks = [
            head.register_forward_hook(self._keep('head')),
            head.things_mask_head.register_forward_hook(self._keep('things')),
            head.stuff_mask_head.register_forward_hook(self._keep('stuff')),
            head.cls_stuff_branches[-1].register_forward_hook(self._keep('stuff_logits')),
        ]
        original = head._get_bboxes_single

        def get_bboxes_single(*args, **kwargs):
            result = original(*args, **kwargs)
            self.seen['top'] = result
            return result

        head._get_bboxes_single = get_bboxes_single
        # the merged scores are local variables of get_bboxes: read them when it returns
        self.merge_code = type(head).get_bboxes.__wrapped__.__code__

    def profile(self, frame, event, arg):
        if event == 'return' and frame.f_code is self.merge_code:
            local = frame.f_locals
            self.seen['merged'] = dict(scores=local['scores_all'].clone(),
                                       labels=local['labels_all'].clone(),
                                       order=local['index'].clone())

    def _keep(self, key):
        def hook(module, inputs, output):
            self.seen[key] = output
        return hook


def run_inference(model, recorder, image, metas):
    import torch
    sys.setprofile(recorder.profile)
    try:
        with torch.no_grad():
            results = model.simple_test(input_tensor(image), [metas], rescale=True)
    finally:
        sys.setprofile(None)
    seen = recorder.seen
    cls, coords = seen['head'][0], seen['head'][1]
    hw = seen['head'][4][-1][0]
    h, w = int(hw[0]), int(hw[1])

    def grid(mask):  # (1, N, h*w, 1) -> (N, h, w)
        return mask[0, ..., 0].reshape(-1, h, w).numpy()

    tail_things, inter_things, _ = seen['things']
    tail_stuff, inter_stuff, _ = seen['stuff']
    index, bboxes, labels = seen['top']
    panoptic = results['panoptic'][0][0]  # (H, W, 2): category id, instance id
    return dict(
        loc_cls_last=cls[-1, 0].numpy(),
        loc_boxes=coords[:, 0].numpy(),
        top_queries=index.numpy(), top_labels=labels.numpy(),
        top_scores=bboxes[:, -1].numpy(),
        thing_masks=np.stack([grid(m) for m in inter_things] + [grid(tail_things)]),
        stuff_masks=np.stack([grid(m) for m in inter_stuff] + [grid(tail_stuff)]),
        stuff_scores=seen['stuff_logits'][0, :, 0].sigmoid().numpy(),
        # Eq. 6 scores of the 100 + 53 candidates, sorted as their merging visits them
        merged_scores=seen['merged']['scores'].numpy(),
        merged_labels=seen['merged']['labels'].numpy(),
        merged_order=seen['merged']['order'].numpy(),
        panoptic=panoptic.astype(np.int32))


def check_margins(model, out, ori_shape):
    """Refuse outputs whose comparison could flip on a rounding difference; returns the
    pixels where a candidate mask is within MASK_MARGIN of 0.5 (not compared)."""
    import torch
    import torch.nn.functional as F
    head = model.bbox_head
    scores = torch.from_numpy(out['loc_cls_last']).sigmoid().flatten().sort(descending=True)[0]
    topk_gap = float(scores[99] - scores[100])
    masks = torch.from_numpy(np.concatenate([out['thing_masks'][-1], out['stuff_masks'][-1]]))
    masks = F.interpolate(masks[None], size=ori_shape, mode='bilinear')[0]
    binary = masks > 0.5
    mask_score = (masks * binary).sum((1, 2)) / (binary.sum((1, 2)) + 1)
    labels = np.concatenate([out['top_labels'], np.arange(NUM_THINGS, NUM_THINGS + NUM_STUFF)])
    score = torch.cat([torch.from_numpy(out['top_scores']),
                       torch.from_numpy(out['stuff_scores'])]) * mask_score**2
    is_thing = torch.from_numpy(labels < NUM_THINGS)
    t_cnf = torch.where(is_thing, head.quality_threshold_things, head.quality_threshold_stuff)
    overlap = torch.where(is_thing, head.overlap_threshold_things, head.overlap_threshold_stuff)
    alive = (score >= t_cnf).nonzero()[:, 0]
    order = alive[score[alive].argsort(descending=True)]
    ordered = score[order]
    problems = []
    if topk_gap < TOPK_MARGIN:
        problems.append(f'top-100 boundary gap {topk_gap:.2e}')
    cnf_gap = float((score - t_cnf).abs().min())
    if cnf_gap < SCORE_MARGIN:
        problems.append(f'a score is {cnf_gap:.2e} from t_cnf')
    # the painting order matters only between masks that overlap: instance ids are
    # compared up to renumbering
    alive_binary = binary[order].flatten(1).float()
    overlapping = (alive_binary @ alive_binary.T) > 0
    close = (ordered[:, None] - ordered[None, :]).abs() < SCORE_MARGIN
    close.fill_diagonal_(False)
    if (close & overlapping).any():
        problems.append('two overlapping segments with scores closer than the margin')
    painted = torch.zeros(ori_shape, dtype=torch.bool)
    for q in order.tolist():
        area = int(binary[q].sum())
        if area == 0:
            continue
        overlap_frac = float((binary[q] & painted).sum()) / area
        if abs(overlap_frac - float(overlap[q])) < KEEP_MARGIN:
            problems.append(f'query {q} overlaps {overlap_frac:.3f} of its mask, at the '
                            f'threshold {float(overlap[q])}')
        if overlap_frac <= float(overlap[q]):
            painted |= binary[q]
    flagged = ((masks[order] - 0.5).abs() < MASK_MARGIN).any(0) if len(order) else \
        torch.zeros(ori_shape, dtype=torch.bool)
    return problems, flagged.numpy(), len(order)


# small versions of the authors' Swin and PVTv2 backbones (the released Swin-L and
# PVTv2-B5 use the same module code and key layout): their outputs check the backbone key
# conversion numerically
BACKBONES = {
    'swin': ('easymd.models.backbones.swin', 'SwinTransformer',
             dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=7,
                  out_indices=(1, 2, 3))),
    'pvtv2': ('easymd.models.backbones.pvt_v2', 'pvt_v2_b0',
              dict(out_indices=[1, 2, 3], pretrained=None)),
}
BACKBONE_INPUT = (1, 3, 60, 92)


def run_backbones():
    """{name: (key list, input, outputs)} of the small authors' backbones, filled with the
    weight rule under ``backbone.``-prefixed names (as in a detector checkpoint)."""
    import torch
    x = np.random.RandomState(3000).normal(size=BACKBONE_INPUT).astype(np.float32)
    results = {}
    for name, (module, cls, kwargs) in BACKBONES.items():
        net = getattr(importlib.import_module(module), cls)(**kwargs)
        state = {f'backbone.{k}': v for k, v in net.state_dict().items()}
        net.load_state_dict({k[len('backbone.'):]: torch.from_numpy(
            deterministic_tensor(k, v.shape)) for k, v in state.items()})
        net.eval()
        with torch.no_grad():
            outs = net(torch.from_numpy(x))
        results[name] = ([(k, list(v.shape)) for k, v in state.items()],
                         [o.numpy() for o in outs])
    return x, results


def run_losses(model, image, metas, target):
    import torch
    from mmdet.core import BitmapMasks
    labels, boxes, masks = target
    model.train()
    for module in model.modules():  # dropout off; frozen BN stays in eval (norm_eval)
        if isinstance(module, (torch.nn.Dropout, torch.nn.MultiheadAttention)):
            module.eval()
    height, width = metas['img_shape'][:2]
    losses = model.forward_train(
        input_tensor(image), [metas], [torch.from_numpy(boxes)], [torch.from_numpy(labels)],
        gt_masks=[BitmapMasks(masks, height, width)])
    model.eval()
    return {name: float(value) for name, value in losses.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repo', required=True,
                        help='checkout of zhiqi-li/Panoptic-SegFormer at ' + SOURCE_COMMIT)
    parser.add_argument('--out', required=True, help='golden .npz to write')
    args = parser.parse_args()
    repo = os.path.abspath(args.repo)
    try:
        commit = subprocess.run(['git', '-C', repo, 'rev-parse', 'HEAD'], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = f'{SOURCE_COMMIT} (not a git checkout: as given)'
    if not commit.startswith(SOURCE_COMMIT) and 'not a git' not in commit:
        raise SystemExit(f'{repo} is at {commit}, expected {SOURCE_COMMIT}')
    start = time.time()
    import torch
    torch.manual_seed(0)
    torch.set_num_threads(1)  # the same reductions on every machine
    import_authors_code(repo)
    import mmcv
    import mmdet
    from easymd.datasets.coco_panoptic import id_and_category_maps

    keys = {}
    for variant, config in (('r101', 'panformer_r101_24e_coco_panoptic.py'),
                            ('swin-l', 'panformer_swinl_24e_coco_panoptic.py'),
                            ('pvtv2-b5', 'panformer_pvtb5_24e_coco_panoptic.py')):
        keys[variant] = key_list(build_model(repo, config))
    model = build_model(repo, 'panformer_r50_24e_coco_panoptic.py')
    keys['r50'] = key_list(model)
    fill_weights(model)
    model.eval()
    recorder = Recorder(model.bbox_head)

    arrays, info = {}, dict(images=[], losses=[])
    for index, (img_shape, ori_shape, num_things) in enumerate(IMAGES):
        metas = img_metas(img_shape, ori_shape, index)
        rejected = []
        for attempt in range(MAX_ATTEMPTS):
            # an image whose comparison is robust and whose panoptic map has a thing and a
            # stuff segment
            seed = 1000 + index + 100 * attempt
            image = make_image(seed, img_shape)
            out = run_inference(model, recorder, image, metas)
            problems, flagged, num_alive = check_margins(model, out, ori_shape)
            category, instance = out['panoptic'][..., 0], out['panoptic'][..., 1]
            if not (instance > 0).any():
                problems.append('no thing segment')
            if not ((category > 0) & (instance == 0)).any():
                problems.append('no stuff segment')
            if not problems:
                break
            rejected.append(f'seed {seed}: {problems}')
        else:
            raise SystemExit(f'image {index}: no robust image in {MAX_ATTEMPTS} seeds: {rejected}')
        target = make_target(index, img_shape, num_things)
        losses = run_losses(model, image, metas, target)
        arrays[f'img{index}.image'] = image
        arrays[f'img{index}.flagged'] = flagged
        for name, value in out.items():
            arrays[f'img{index}.{name}'] = value
        for name, value in zip(('labels', 'boxes', 'masks'), target):
            arrays[f'img{index}.target_{name}'] = value
        info['images'].append(dict(img_shape=list(img_shape), ori_shape=list(ori_shape),
                                   image_seed=seed, rejected_seeds=len(rejected),
                                   scored_segments=num_alive,
                                   segments=int(len(np.unique(
                                       out['panoptic'][..., 0] * 1000 +
                                       out['panoptic'][..., 1])))))
        info['losses'].append(losses)
    info.update(
        source='zhiqi-li/Panoptic-SegFormer', commit=commit,
        config='configs/panformer/panformer_r50_24e_coco_panoptic.py',
        versions=dict(torch=torch.__version__, mmcv=mmcv.__version__, mmdet=mmdet.__version__,
                      numpy=np.__version__, python=sys.version.split()[0]),
        category_ids=[int(c['id']) for c in id_and_category_maps],
        thresholds=dict(t_cnf_things=model.bbox_head.quality_threshold_things,
                        t_cnf_stuff=model.bbox_head.quality_threshold_stuff,
                        overlap_things=model.bbox_head.overlap_threshold_things,
                        overlap_stuff=model.bbox_head.overlap_threshold_stuff),
        margins=dict(topk=TOPK_MARGIN, score=SCORE_MARGIN, keep=KEEP_MARGIN, mask=MASK_MARGIN),
        keys=keys, seconds=round(time.time() - start, 1))
    backbone_input, backbones = run_backbones()
    arrays['backbone_input'] = backbone_input
    info['backbones'] = {}
    for name, (backbone_keys, outs) in backbones.items():
        info['backbones'][name] = dict(keys=backbone_keys, kwargs=BACKBONES[name][2])
        for level, out in enumerate(outs):
            arrays[f'{name}.out{level}'] = out
    arrays['info'] = np.frombuffer(json.dumps(info).encode(), dtype=np.uint8)
    tmp = args.out + '.tmp.npz'
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, args.out)
    print(json.dumps(dict(info, keys={k: len(v) for k, v in keys.items()}), indent=1))


if __name__ == '__main__':
    main()
