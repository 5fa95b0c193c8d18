"""Run the official Mask2Former (on detectron2) and write a golden file.

This script never runs in mmmaps' environment or CI. It runs in the environment of
``setup_venv.sh`` (torch 2.5.1, CPU, the pure-python dependencies of detectron2) next to source
trees of Mask2Former and detectron2, which it puts on ``sys.path`` (neither is installed or
compiled). It builds the models exactly as their ``train_net.py`` does (``get_cfg``,
``add_deeplab_config``, ``add_maskformer2_config``, ``merge_from_file``, ``build_model``) and
records:

- the ``state_dict()`` keys and shapes of the panoptic R50 COCO, R101 COCO, R50 ADE20K and
  R50 Cityscapes models (the key names of detectron2 checkpoints);
- for the COCO R50 model with every tensor set by :func:`deterministic_tensor` (keyed by the
  detectron2 parameter name), on two unpadded, already normalised images (eval mode,
  ``model.backbone(x)`` then ``model.sem_seg_head(features)``): the last layer's class logits
  and mask logits, every auxiliary layer's class logits, the auxiliary mask logits of every
  twentieth query, the pixel decoder's ``mask_features`` (all channels of image 0, every
  fourth of image 1) and its multi-scale outputs at strides 32 and 16 (stride 8: per-channel
  means), the per-channel means of res2..res5, and the panoptic output of the full model
  (``model([{'image': uint8 CHW, 'height', 'width'}])``, ``PANOPTIC_ON``);
- what detectron2's checkpoint loader does with three ways of writing a ``.pkl`` (a probe for
  the converter: see ``info['checkpoint_probe']``).

    bash tests/reference/m2f_detectron2/setup_venv.sh            # once
    mkdir -p /tmp/m2f /tmp/d2   # the source trees at M2F_COMMIT and D2_COMMIT (see README.md)
    git -C <Mask2Former clone or mirror> archive 9b0651c6c1d5 | tar -x -C /tmp/m2f
    git -C <detectron2 clone or mirror> archive 02b5c4e295e9 | tar -x -C /tmp/d2
    ~/.cache/mmmaps/m2f-detectron2-venv/bin/python tests/reference/m2f_detectron2/make_golden.py \
        --d2 /tmp/d2 --m2f /tmp/m2f --out tests/reference/m2f_detectron2/golden.npz

Stubs (nothing of them changes a computation; see README.md): the compiled module
``detectron2._C`` (imported by ``detectron2.evaluation.fast_eval_api``, which Mask2Former's
package ``__init__`` imports; its ops are not used by the forward) and Mask2Former's CUDA
extension ``MultiScaleDeformableAttention``, whose functions raise, so that
``MSDeformAttn.forward`` takes its own ``except:`` branch, ``ms_deform_attn_core_pytorch``
(counted here through a wrapper that calls the original).

The golden images are refused, and the next seed is tried, when a comparison could flip on
float rounding: a mask logit that decides an attention mask of the transformer decoder within
``ATTN_MARGIN`` of 0, or in the panoptic output a query score within ``SCORE_MARGIN`` of the
0.8 keep threshold, a kept query's top-2 class probabilities closer than ``SCORE_MARGIN``, or a
segment whose kept fraction is within ``KEEP_MARGIN`` of the 0.8 overlap threshold. Pixels of
the panoptic map where a kept mask's probability is within ``MASK_MARGIN`` of 0.5 or the two
best probability-weighted masks are closer than ``MASK_MARGIN`` (relative) are flagged (not
compared); a kept query's keep-or-drop decision must not change with its flagged pixels.
Each image's panoptic map must have a segment, and the two maps together a thing and a stuff
segment.
"""
import argparse
import collections
import hashlib
import importlib.metadata
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
import types
import zlib

import numpy as np

os.environ['CUDA_VISIBLE_DEVICES'] = ''  # the CPU (torch is imported later, in main)

M2F_COMMIT = '9b0651c6c1d5b3af2e6da0589b719c514ec0d69a'
D2_COMMIT = '02b5c4e295e990042a714712c21dc79b731e8833'
CONFIGS = {  # variant: Mask2Former config (panoptic segmentation)
    'coco_r50': 'configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml',
    'coco_r101': 'configs/coco/panoptic-segmentation/maskformer2_R101_bs16_50ep.yaml',
    'ade20k_r50': 'configs/ade20k/panoptic-segmentation/maskformer2_R50_bs16_160k.yaml',
    'cityscapes_r50': 'configs/cityscapes/panoptic-segmentation/maskformer2_R50_bs16_90k.yaml',
}
GOLDEN = 'coco_r50'
IMAGES = ((96, 128), (128, 96))  # (H, W): multiples of 32, so no padding
# what is kept of the bigger arrays (the file stays near 3 MB): the auxiliary mask logits of
# these queries, the mask_features channels of each image, multi_scale_features[2] (stride 8)
# only as per-channel means
AUX_MASK_QUERIES = tuple(range(0, 100, 20))
MASK_FEATURE_CHANNELS = (tuple(range(256)), tuple(range(0, 256, 4)))
ATTN_MARGIN = 1e-4    # |mask logit| that decides an attention mask (sigmoid < 0.5)
SCORE_MARGIN = 1e-4   # panoptic: score vs object_mask_threshold, top-2 class probabilities
KEEP_MARGIN = 0.02    # panoptic: kept fraction vs overlap_threshold
MASK_MARGIN = 1e-4    # panoptic: pixels flagged (not compared)
MAX_ATTEMPTS = 100    # image seeds tried per golden image


# ----------------------------------------------------------------------- weights
EMBEDDINGS = ('query_feat.weight', 'query_embed.weight', 'level_embed', 'level_embed.weight')
GAINS = (  # (regular expression searched in the name, gain of the >= 2-dim rule)
    (r'^sem_seg_head\.predictor\.transformer_(self|cross)_attention_layers\.\d+\.'
     r'(self_attn|multihead_attn)\.out_proj\.weight$', 0.25),
    (r'^sem_seg_head\.predictor\.class_embed\.weight$', 4.0),
)


def deterministic_tensor(name: str, shape) -> np.ndarray:
    """The value of parameter/buffer ``name`` (the detectron2 ``state_dict()`` key); mmmaps'
    test re-implements this rule and must produce the same numbers:

    ``rng = np.random.RandomState(zlib.crc32(name.encode()))``, ``last = name.rsplit('.',
    1)[-1]``, ``shape`` a tuple of ints, then the first that applies:

    1. ``last == 'num_batches_tracked'``: ``np.zeros(shape, np.int64)``;
    2. ``last == 'running_mean'``: ``rng.uniform(-0.1, 0.1, shape)``;
    3. ``last == 'running_var'``: ``rng.uniform(0.5, 1.5, shape)``;
    4. embeddings, ``name.endswith(('query_feat.weight', 'query_embed.weight', 'level_embed',
       'level_embed.weight'))`` (the predictor's ``query_feat``/``query_embed``/``level_embed``
       ``nn.Embedding`` weights and the pixel decoder's ``transformer.level_embed``
       parameter): ``rng.uniform(-np.sqrt(3.0), np.sqrt(3.0), shape)``;
    5. ``len(shape) >= 2``: ``rng.uniform(-bound, bound, shape)`` with ``bound = gain *
       np.sqrt(3.0 / np.prod(shape[1:]))`` (float64), where ``gain`` is 0.25 for the output
       projections of the transformer decoder's attention layers
       (``sem_seg_head.predictor.transformer_self_attention_layers.N.self_attn.out_proj.weight``
       and ``...transformer_cross_attention_layers.N.multihead_attn.out_proj.weight``), 4.0
       for ``sem_seg_head.predictor.class_embed.weight``, and 1.0 otherwise;
    6. ``last == 'weight'`` (1-dim): ``1.0 + rng.uniform(-0.1, 0.1, shape)``;
    7. anything else (biases, 1-dim buffers such as ``criterion.empty_weight``):
       ``rng.uniform(-0.1, 0.1, shape)``;

    every result but rule 1 cast with ``.astype(np.float32)``. The two gains are exceptions
    to the plain rule: with gain 1 the attention outputs (the memory's level embedding and
    channel offsets are shared by every query) wash out the query features layer by layer,
    and the last layer's 100 queries give the same argmax class and nearly the same mask
    (std of the class logits across queries 0.035 against 1.0 within a query); the class
    gain lets a few queries pass the panoptic keep threshold (softmax score > 0.8 of 134).
    """
    rng = np.random.RandomState(zlib.crc32(name.encode()))
    last = name.rsplit('.', 1)[-1]
    shape = tuple(int(s) for s in shape)
    if last == 'num_batches_tracked':
        return np.zeros(shape, dtype=np.int64)
    if last == 'running_mean':
        return rng.uniform(-0.1, 0.1, shape).astype(np.float32)
    if last == 'running_var':
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if name.endswith(EMBEDDINGS):
        return rng.uniform(-np.sqrt(3.0), np.sqrt(3.0), shape).astype(np.float32)
    if len(shape) >= 2:
        gain = 1.0
        for pattern, value in GAINS:
            if re.search(pattern, name):
                gain = value
        bound = gain * np.sqrt(3.0 / np.prod(shape[1:]))
        return rng.uniform(-bound, bound, shape).astype(np.float32)
    if last == 'weight':
        return (1.0 + rng.uniform(-0.1, 0.1, shape)).astype(np.float32)
    return rng.uniform(-0.1, 0.1, shape).astype(np.float32)


def make_image(seed: int, shape) -> np.ndarray:
    """An RGB uint8 image (H, W, 3) of smooth blobs and a little noise (RandomState(seed))."""
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


def normalise(image: np.ndarray, mean, std) -> np.ndarray:
    """(H, W, 3) RGB uint8 -> (3, H, W) float32 ``(image - PIXEL_MEAN) / PIXEL_STD`` in RGB
    order (the configs' ``INPUT.FORMAT`` is RGB); the same float32 operations as
    ``MaskFormer.forward`` on a uint8 tensor."""
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return ((image - mean) / std).transpose(2, 0, 1).copy()


# ----------------------------------------------------------------------- their code
STUBS = {}


def _stub_module(name: str, why: str):
    """A module whose every function raises: the compiled code is not there."""
    module = types.ModuleType(name)
    calls = collections.Counter()

    def missing(attr):
        if attr.startswith('__'):
            raise AttributeError(attr)

        def call(*args, **kwargs):
            calls[attr] += 1
            raise RuntimeError(f'{name}.{attr}: not compiled (CPU reference)')
        return call

    module.__getattr__ = missing
    sys.modules[name] = module
    STUBS[name] = dict(why=why, calls=calls)


def import_official_code(d2: str, m2f: str):
    _stub_module('detectron2._C', 'compiled detectron2 ops (ROIAlign, deformable conv, NMS, '
                 'COCOeval); imported by detectron2.evaluation.fast_eval_api through '
                 "mask2former's package __init__; not used by the Mask2Former forward")
    _stub_module('MultiScaleDeformableAttention',
                 "Mask2Former's CUDA extension (pixel_decoder/ops); its functions raise, so "
                 'MSDeformAttn.forward falls back to ms_deform_attn_core_pytorch (its except: '
                 'branch)')
    sys.path[:0] = [d2, m2f]
    import detectron2  # noqa: F401
    import mask2former  # noqa: F401 (registers the meta-architecture, heads, datasets)
    # count the CPU fallback's calls (the wrapper calls the original, unchanged)
    module = sys.modules['mask2former.modeling.pixel_decoder.ops.modules.ms_deform_attn']
    original = module.ms_deform_attn_core_pytorch
    calls = collections.Counter()

    def counted(*args, **kwargs):
        calls['ms_deform_attn_core_pytorch'] += 1
        return original(*args, **kwargs)

    module.ms_deform_attn_core_pytorch = counted
    return calls


def build_cfg(m2f: str, config: str, panoptic: bool = False):
    from detectron2.config import get_cfg
    from detectron2.projects.deeplab import add_deeplab_config
    from mask2former import add_maskformer2_config
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    cfg.merge_from_file(os.path.join(m2f, config))
    cfg.MODEL.DEVICE = 'cpu'
    cfg.MODEL.WEIGHTS = ''
    if panoptic:
        cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = True
    cfg.freeze()
    return cfg


def build(m2f: str, config: str, panoptic: bool = False):
    from detectron2.modeling import build_model
    cfg = build_cfg(m2f, config, panoptic)
    model = build_model(cfg)
    model.eval()
    return cfg, model


def class_order(cfg):
    """The classes in the order of the model's class indices, with their isthing flag, as
    the metadata of the config's test dataset has them (the registration of the dataset
    in mask2former/data/datasets or detectron2/data/datasets/builtin)."""
    from detectron2.data import MetadataCatalog
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    things = set(meta.thing_dataset_id_to_contiguous_id.values())
    return [[name, index in things] for index, name in enumerate(meta.stuff_classes)]


def key_list(model):
    return [(name, list(tensor.shape)) for name, tensor in model.state_dict().items()]


def fill_weights(model):
    """Set every tensor of ``model.state_dict()`` by the rule. The state dict returned by
    ``state_dict()`` is loaded back (it keeps ``_metadata``: without it, the version check of
    ``MaskFormerHead._load_from_state_dict`` renames every pixel-decoder key)."""
    import torch
    state = model.state_dict()
    for name in list(state):
        state[name] = torch.from_numpy(deterministic_tensor(name, state[name].shape))
    result = model.load_state_dict(state, strict=True)
    for name, tensor in model.state_dict().items():
        assert np.array_equal(tensor.numpy(), deterministic_tensor(name, tensor.shape)), name
    return result


# ----------------------------------------------------------------------- running it
def run_head(model, x):
    """``model.backbone(x)`` and ``model.sem_seg_head(features)``, with the predictor's inputs
    (the pixel decoder's multi-scale features and mask features) read by a pre-hook."""
    import torch
    seen = {}

    def pre_hook(module, args):
        seen['multi_scale'] = [t.clone() for t in args[0]]
        seen['mask_features'] = args[1].clone()

    handle = model.sem_seg_head.predictor.register_forward_pre_hook(pre_hook)
    try:
        with torch.no_grad():
            features = model.backbone(torch.from_numpy(x)[None])
            out = model.sem_seg_head(features)
    finally:
        handle.remove()
    return features, out, seen


def attention_margins(out, features):
    """The smallest |mask logit| that decides each attention mask of the decoder: prediction
    i (i = 0..8; 0 is from the learnable queries) is resized to the size of level i % 3 of the
    predictor's inputs (1/32, 1/16, 1/8) and masks where sigmoid < 0.5, as
    ``forward_prediction_heads`` does (the same F.interpolate call)."""
    import torch
    import torch.nn.functional as F
    sizes = [features[k].shape[-2:] for k in ('res5', 'res4', 'res3')]
    predictions = [a['pred_masks'] for a in out['aux_outputs']]  # 0..8
    margins = []
    with torch.no_grad():
        for i, masks in enumerate(predictions):
            resized = F.interpolate(masks, size=sizes[i % 3], mode='bilinear',
                                    align_corners=False)
            margins.append(float(resized.abs().min()))
    return margins


def run_panoptic(model, image):
    """The full model on a uint8 CHW image (its own normalisation), with the head's output
    read by a forward hook."""
    import torch
    seen = {}
    handle = model.sem_seg_head.register_forward_hook(
        lambda module, args, output: seen.update(out=output))
    try:
        with torch.no_grad():
            result = model([{'image': torch.from_numpy(image.transpose(2, 0, 1).copy()),
                             'height': image.shape[0], 'width': image.shape[1]}])[0]
    finally:
        handle.remove()
    return result, seen['out']


def check_panoptic(model, logits, masks, shape):
    """Re-trace ``MaskFormer.panoptic_inference`` (same operations) and return (problems,
    flagged pixels, the re-traced map) for the margins of the module docstring."""
    import torch
    import torch.nn.functional as F
    from detectron2.modeling.postprocessing import sem_seg_postprocess
    height, width = shape
    num_classes = model.sem_seg_head.num_classes
    with torch.no_grad():
        mask_pred = F.interpolate(masks[None], size=(height, width), mode='bilinear',
                                  align_corners=False)[0]
        mask_pred = sem_seg_postprocess(mask_pred, (height, width), height, width)
        probs = F.softmax(logits, dim=-1)
        scores, labels = probs.max(-1)
        top2 = probs.topk(2, dim=-1).values
        mask_prob = mask_pred.sigmoid()
    problems = []
    near = (scores - model.object_mask_threshold).abs() < SCORE_MARGIN
    if near.any():
        problems.append(f'{int(near.sum())} scores within {SCORE_MARGIN} of the threshold')
    candidate = scores > model.object_mask_threshold - SCORE_MARGIN
    gap = (top2[:, 0] - top2[:, 1])[candidate]
    if len(gap) and float(gap.min()) < SCORE_MARGIN:
        problems.append('a kept query with two classes closer than the margin')
    keep = labels.ne(num_classes) & (scores > model.object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_prob[keep]
    flagged = torch.zeros((height, width), dtype=torch.bool)
    panoptic = torch.zeros((height, width), dtype=torch.int32)
    segments = []
    if len(cur_scores):
        prob_masks = cur_scores.view(-1, 1, 1) * cur_masks
        near_half = (cur_masks - 0.5).abs() < MASK_MARGIN  # (K, H, W)
        flagged |= near_half.any(0)
        ids = prob_masks.argmax(0)
        second = torch.full_like(ids, -1)
        if len(cur_scores) > 1:
            best, order = prob_masks.topk(2, dim=0)
            # a relative gap: the products of a score and a sigmoid are accurate to a
            # relative, not an absolute, error where every mask is far below 0.5
            close = (best[0] - best[1]) < MASK_MARGIN * best[0]
            flagged |= close
            second = torch.where(close, order[1], second)
        things = set(model.metadata.thing_dataset_id_to_contiguous_id.values())
        stuff_memory, current = {}, 0
        for k in range(len(cur_classes)):
            pred_class = int(cur_classes[k])
            isthing = pred_class in things
            mask_area = int((ids == k).sum())
            original_area = int((cur_masks[k] >= 0.5).sum())
            mask = (ids == k) & (cur_masks[k] >= 0.5)
            # the flagged pixels that could change this query's areas: the decision must be
            # the same for every area within them (and KEEP_MARGIN from the threshold)
            unsure = int((flagged & ((ids == k) | (second == k) | near_half[k])).sum())
            areas = (mask_area, original_area, int(mask.sum()))
            possible = min(a + unsure for a in areas) > 0 and \
                (mask_area + unsure) / max(original_area - unsure, 1) >= \
                model.overlap_threshold - KEEP_MARGIN
            certain = min(a - unsure for a in areas) > 0 and \
                (mask_area - unsure) / (original_area + unsure) >= \
                model.overlap_threshold + KEEP_MARGIN
            if possible != certain:
                problems.append(f'kept query {k}: areas {areas} ({unsure} flagged pixels) at '
                                f'the overlap threshold {model.overlap_threshold}')
            if mask_area > 0 and original_area > 0 and int(mask.sum()) > 0:
                ratio = mask_area / original_area
                if ratio < model.overlap_threshold:
                    continue
                if not isthing:
                    if pred_class in stuff_memory:
                        panoptic[mask] = stuff_memory[pred_class]
                        continue
                    stuff_memory[pred_class] = current + 1
                current += 1
                panoptic[mask] = current
                segments.append(dict(id=current, isthing=bool(isthing), category_id=pred_class))
    return problems, flagged.numpy(), panoptic.numpy(), segments


def stats(logits, masks):
    """Evidence that the outputs are not degenerate."""
    logits = logits.numpy()
    masks = masks.numpy().reshape(masks.shape[0], -1)
    return dict(
        logits_std=float(logits.std()),
        logits_std_across_queries=float(logits.std(0).mean()),
        logits_std_across_classes=float(logits.std(1).mean()),
        distinct_argmax_classes=int(len(np.unique(logits.argmax(1)))),
        mask_std=float(masks.std()),
        mask_std_across_queries=float(masks.std(0).mean()),
        mask_fraction_positive=float((masks > 0).mean()),
        distinct_binary_masks=int(len({row.tobytes() for row in (masks > 0)})),
        queries_winning_a_pixel=int(len(np.unique(masks.argmax(0)))))


# ----------------------------------------------------------------------- checkpoint probe
def probe_checkpoint_formats(m2f: str, config: str):
    """What detectron2's ``DetectionCheckpointer`` does with a ``.pkl`` holding the filled
    state dict as numpy arrays under ``'model'`` (with ``'__author__'``, as the model-zoo
    files), written three ways: (a) a plain dict with the current key names, (b) the
    ``OrderedDict`` of ``state_dict()`` (which keeps ``_metadata``, the module versions),
    (c) a plain dict with the old key names (pixel decoder keys without ``pixel_decoder.``,
    ``static_query`` for ``query_feat``). Returns, per way, the missing/unexpected keys and
    whether every tensor arrived."""
    from detectron2.checkpoint import DetectionCheckpointer
    _, model = build(m2f, config)
    fill_weights(model)
    state = model.state_dict()
    expected = {k: v.numpy().copy() for k, v in state.items()}

    def old_name(key):
        if key.startswith('sem_seg_head.pixel_decoder.'):
            key = 'sem_seg_head.' + key[len('sem_seg_head.pixel_decoder.'):]
        return key.replace('.query_feat.', '.static_query.')

    ordered = model.state_dict()
    for key in list(ordered):
        ordered[key] = ordered[key].numpy().copy()
    ways = {
        'a_plain_dict_current_names': {k: v.copy() for k, v in expected.items()},
        'b_state_dict_with_metadata': ordered,
        'c_plain_dict_old_names': {old_name(k): v.copy() for k, v in expected.items()},
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for way, weights in ways.items():
            path = os.path.join(tmp, f'{way}.pkl')
            with open(path, 'wb') as f:
                pickle.dump({'model': weights, '__author__': 'probe'}, f)
            _, fresh = build(m2f, config)
            checkpointer = DetectionCheckpointer(fresh)
            incompatible = checkpointer._load_model(checkpointer._load_file(path))
            loaded = fresh.state_dict()
            wrong = [k for k, v in expected.items() if not np.array_equal(loaded[k].numpy(), v)]
            results[way] = dict(
                missing=len(incompatible.missing_keys),
                unexpected=len(incompatible.unexpected_keys),
                missing_first=sorted(incompatible.missing_keys)[:3],
                unexpected_first=sorted(incompatible.unexpected_keys)[:3],
                tensors_not_loaded=len(wrong))
    return results


# ----------------------------------------------------------------------- main
def source_commit(path: str, expected: str) -> str:
    try:
        commit = subprocess.run(['git', '-C', path, 'rev-parse', 'HEAD'], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f'{expected} (not a git checkout: as given)'
    if commit != expected:
        raise SystemExit(f'{path} is at {commit}, expected {expected}')
    return commit


def versions():
    out = dict(python=sys.version.split()[0])
    for package in ('torch', 'torchvision', 'numpy', 'fvcore', 'iopath', 'omegaconf',
                    'hydra-core', 'pycocotools', 'timm', 'scipy', 'opencv-python-headless'):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--d2', required=True, help=f'detectron2 source tree at {D2_COMMIT}')
    parser.add_argument('--m2f', required=True, help=f'Mask2Former source tree at {M2F_COMMIT}')
    parser.add_argument('--out', required=True, help='golden .npz to write')
    args = parser.parse_args()
    d2, m2f = os.path.abspath(args.d2), os.path.abspath(args.m2f)
    commits = dict(detectron2=source_commit(d2, D2_COMMIT),
                   mask2former=source_commit(m2f, M2F_COMMIT))
    start = time.time()
    import torch
    torch.manual_seed(0)
    torch.set_num_threads(1)  # the same reductions on every machine
    fallback_calls = import_official_code(d2, m2f)

    keys, configs = {}, {}
    for variant, config in CONFIGS.items():
        cfg, model = build(m2f, config)
        keys[variant] = key_list(model)
        configs[variant] = dict(
            config=config, num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            backbone_norm=cfg.MODEL.RESNETS.NORM, depth=cfg.MODEL.RESNETS.DEPTH,
            num_keys=len(keys[variant]),
            classes=class_order(cfg),
            num_values=int(sum(int(np.prod(s)) for _, s in keys[variant])),
            parameters=int(sum(p.numel() for p in model.parameters())))
    build_seconds = time.time() - start

    cfg, model = build(m2f, CONFIGS[GOLDEN], panoptic=True)
    assert key_list(model) == keys[GOLDEN]
    fill_weights(model)
    digest = hashlib.sha256()  # of the filled tensors' bytes, in key order (a check for the
    for name, tensor in model.state_dict().items():  # test's re-implementation of the rule)
        digest.update(tensor.numpy().tobytes())
    mean, std = list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)

    arrays, images_info = {}, []
    for index, shape in enumerate(IMAGES):
        rejected = []
        for attempt in range(MAX_ATTEMPTS):
            seed = 1000 + index + 100 * attempt
            image = make_image(seed, shape)
            x = normalise(image, mean, std)
            features, out, seen = run_head(model, x)
            problems = []
            margins = attention_margins(out, features)
            if min(margins) < ATTN_MARGIN:
                problems.append(f'attention-mask logit {min(margins):.1e} from 0')
            result, full_out = run_panoptic(model, image)
            same = all(torch.equal(full_out[k], out[k]) for k in ('pred_logits', 'pred_masks'))
            if not same:
                raise SystemExit('the full model and backbone + sem_seg_head disagree')
            panoptic_problems, flagged, retraced, segments = check_panoptic(
                model, out['pred_logits'][0], out['pred_masks'][0], shape)
            problems += panoptic_problems
            panoptic_seg, segments_info = result['panoptic_seg']
            panoptic_seg = panoptic_seg.numpy().astype(np.int32)
            if not (np.array_equal(retraced, panoptic_seg) and segments == segments_info):
                raise SystemExit('re-traced panoptic inference differs from theirs')
            if not segments_info:
                problems.append('no segment')
            if index == len(IMAGES) - 1:  # the golden images have a thing and a stuff segment
                kinds = {s['isthing'] for i in images_info for s in i['segments_info']}
                kinds |= {s['isthing'] for s in segments_info}
                if kinds != {True, False}:
                    problems.append('no thing and stuff segment in the golden images')
            if not problems:
                break
            rejected.append(f'seed {seed}: {problems}')
        else:
            raise SystemExit(f'image {index}: no robust seed in {MAX_ATTEMPTS}: {rejected}')
        prefix = f'img{index}.'
        logits, masks = out['pred_logits'][0], out['pred_masks'][0]
        arrays[prefix + 'image'] = image
        arrays[prefix + 'input'] = x
        for level in ('res2', 'res3', 'res4', 'res5'):
            arrays[prefix + f'{level}_mean'] = features[level][0].mean((1, 2)).numpy()
        arrays[prefix + 'pred_logits'] = logits.numpy()
        arrays[prefix + 'pred_masks'] = masks.numpy()
        arrays[prefix + 'aux_logits'] = torch.stack(
            [a['pred_logits'][0] for a in out['aux_outputs']]).numpy()
        arrays[prefix + 'aux_masks'] = torch.stack(
            [a['pred_masks'][0, list(AUX_MASK_QUERIES)] for a in out['aux_outputs']]).numpy()
        arrays[prefix + 'mask_features'] = \
            seen['mask_features'][0, list(MASK_FEATURE_CHANNELS[index])].numpy()
        for level, feature in enumerate(seen['multi_scale'][:2]):
            arrays[prefix + f'multi_scale_{level}'] = feature[0].numpy()
        arrays[prefix + 'multi_scale_2_mean'] = seen['multi_scale'][2][0].mean((1, 2)).numpy()
        arrays[prefix + 'panoptic_seg'] = panoptic_seg
        arrays[prefix + 'panoptic_flagged'] = flagged
        images_info.append(dict(
            shape=list(shape), seed=seed, rejected_seeds=len(rejected),
            mask_feature_channels=list(MASK_FEATURE_CHANNELS[index]),
            attention_margins=margins, segments_info=segments_info,
            flagged_pixels=int(flagged.sum()),
            stats_last=stats(logits, masks),
            stats_aux=[stats(a['pred_logits'][0], a['pred_masks'][0])
                       for a in out['aux_outputs']]))
    run_seconds = time.time() - start - build_seconds
    probe = probe_checkpoint_formats(m2f, CONFIGS[GOLDEN])

    info = dict(
        source=dict(mask2former='facebookresearch/Mask2Former', detectron2='facebookresearch/'
                    'detectron2'),
        commits=commits, versions=versions(), configs=configs, golden_config=CONFIGS[GOLDEN],
        keys=keys,
        stubs={name: dict(why=s['why'], calls=dict(s['calls'])) for name, s in STUBS.items()},
        cpu_fallback_calls=dict(fallback_calls),
        weight_rule=deterministic_tensor.__doc__, weights_sha256=digest.hexdigest(),
        gains=[list(g) for g in GAINS], embeddings=list(EMBEDDINGS),
        pixel_mean=mean, pixel_std=std, input_format=cfg.INPUT.FORMAT,
        normalisation='input = (RGB uint8 HWC - PIXEL_MEAN) / PIXEL_STD in float32, CHW',
        images=images_info, aux_mask_queries=list(AUX_MASK_QUERIES),
        arrays={
            'imgI.image': 'uint8 (H, W, 3) RGB',
            'imgI.input': 'float32 (3, H, W), the normalised image given to model.backbone',
            'imgI.resN_mean': 'float32 (C,): per-channel mean of backbone output resN',
            'imgI.pred_logits': 'float32 (Q, C+1): last layer class logits',
            'imgI.pred_masks': 'float32 (Q, H/4, W/4): last layer mask logits',
            'imgI.aux_logits': 'float32 (9, Q, C+1): aux_outputs[i].pred_logits (layer 0 = '
                               'the learnable queries before any decoder layer)',
            'imgI.aux_masks': 'float32 (9, 5, H/4, W/4): aux_outputs[i].pred_masks for the '
                              'queries aux_mask_queries',
            'imgI.mask_features': 'float32 (n, H/4, W/4): pixel decoder mask_features, the '
                                  'channels images[I].mask_feature_channels',
            'imgI.multi_scale_L': 'float32 (256, h, w): pixel decoder multi_scale_features[L], '
                                  'L = 0, 1 at strides 32, 16 (predictor inputs 0 and 1)',
            'imgI.multi_scale_2_mean': 'float32 (256,): per-channel mean of '
                                       'multi_scale_features[2] (stride 8)',
            'imgI.panoptic_seg': 'int32 (H, W): panoptic_seg of model([...]), segment ids of '
                                 'images[I].segments_info (category_id: contiguous class)',
            'imgI.panoptic_flagged': 'bool (H, W): pixels not to compare'},
        level_order=dict(
            pixel_decoder_input_proj=['res5', 'res4', 'res3'],
            pixel_decoder_transformer_level_embed=['res5', 'res4', 'res3'],
            pixel_decoder_adapter_1_layer_1='res2',
            predictor_level_embed_and_input_proj=['1/32 (res5 level)', '1/16 (res4 level)',
                                                  '1/8 (res3 level)'],
            decoder_layer_i_attends='multi_scale_features[i % 3]',
            decoder_layer_order='cross-attention, self-attention, FFN (post-norm); the '
                                'state_dict lists the self-attention layers first'),
        thresholds=dict(object_mask_threshold=model.object_mask_threshold,
                        overlap_threshold=model.overlap_threshold),
        margins=dict(attention=ATTN_MARGIN, score=SCORE_MARGIN, keep=KEEP_MARGIN,
                     mask=MASK_MARGIN),
        checkpoint_probe=probe,
        seconds=dict(build_models=round(build_seconds, 1), golden_images=round(run_seconds, 1),
                     total=round(time.time() - start, 1)))
    arrays['info'] = np.frombuffer(json.dumps(info).encode(), dtype=np.uint8)
    tmp = args.out + '.tmp.npz'
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, args.out)
    summary = dict(info, keys={k: len(v) for k, v in keys.items()}, weight_rule='...')
    for image in summary['images']:
        image.pop('stats_aux')
    print(json.dumps(summary, indent=1))
    print(f'{args.out}: {os.path.getsize(args.out)} bytes')


if __name__ == '__main__':
    main()
