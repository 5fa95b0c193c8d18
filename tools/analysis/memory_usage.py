"""How much a trained MAPS model takes from its memory: per memory layer, on the test split.

    python tools/analysis/memory_usage.py CONFIG CKPT [--work-dir DIR] [--cfg-options ...]

Runs the test split through the model (the usual test loop, so its metrics are computed too)
and reports, for every decoder layer with a memory attention (Eq. 1):

- ``query_norm``: mean L2 norm of the queries entering the memory attention;
- ``update_norm``: mean norm of what the attention adds, softmax(QK^T / sqrt(d)) V;
- ``update_ratio``: their ratio (0 = the layer ignores its memory);
- ``max_weight`` / ``entropy``: mean largest attention weight and mean entropy (nats) over
  the non-padded slots, next to the entropy of uniform attention over the same slots;
- ``value_spread``: mean cosine between the centred values of two different retrieved items
  of a query, W_V (m_i - mean) and W_V (m_j - mean), where mean is the mean value of the
  memory bank the layer reads: without the bias and the component every item shares, near 1
  means every item hands the query the same vector, near 0 unrelated vectors.

When the annotation files carry a ``scene`` per image (the synthetic generator's), it also
reports how often a retrieved scene has the query's scene type. Writes
``WORK_DIR/memory_usage.json``.
"""
import os, sys; sys.path.insert(0, os.path.realpath(__file__ + '/../../..'))  # noqa (this checkout first)

import argparse
import json
import math
import os
import os.path as osp
import sys
from collections import defaultdict



def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--work-dir', default=None)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def ann_scenes(cfg, split):
    """{image id: scene} of a split's annotation file, or None without scene fields."""
    from mmmaps.memory.dataset_records import dataset_cfg_of
    dataset = dataset_cfg_of(cfg, split)
    ann = dataset['ann_file']
    if not osp.isabs(ann) and dataset.get('data_root'):
        ann = osp.join(dataset['data_root'], ann)
    with open(ann) as f:
        images = json.load(f)['images']
    if not all('scene' in im for im in images):
        return None
    return {int(im['id']): im['scene'] for im in images}


def bank_value_mean(bank, chunk: int = 65536):
    """(C,) float32 mean of a memory bank's values, read in chunks (memory-mapped banks)."""
    import numpy as np
    import torch
    total = np.zeros(bank.values.shape[1], dtype=np.float64)
    for start in range(0, len(bank.values), chunk):
        total += np.asarray(bank.values[start:start + chunk], dtype=np.float64).sum(0)
    return torch.from_numpy(total / max(len(bank.values), 1)).float()


def memory_value_means(model):
    """``centre_of`` for :class:`UsageProbe` on a MAPS model: each memory layer's centre is
    the mean value of the bank it reads (computed once per bank, when first needed; the
    memory is attached when the run starts)."""
    head = model.panoptic_head
    means = {}

    def centre_of(layer_name):
        index = int(layer_name.split('.layers.')[1].split('.')[0])
        source = head.layer_sources[index]
        if source not in means:
            if head.learned_memory is not None:
                return head.learned_memory[source].detach().mean(0)
            root = model.memory.root
            means[source] = bank_value_mean(root.scene_bank if source == 'scene'
                                            else root.object_bank)
        return means[source]
    return centre_of


class UsageProbe:
    """Forward hooks on the MemoryCrossAttention modules and the MAPS head.

    Args:
        model: The model to probe.
        centre_of (callable, optional): layer name -> (C_m,) the value mean subtracted
            before the value cosine (:func:`memory_value_means`); None: no centring.
    """

    def __init__(self, model, centre_of=None):
        import torch
        from mmmaps.models.layers.memory_attention import MemoryCrossAttention
        self.torch = torch
        self.centre_of = centre_of
        self.stats = defaultdict(lambda: defaultdict(float))
        self.retrievals = []
        self.handles = []
        for name, module in model.named_modules():
            if isinstance(module, MemoryCrossAttention) and name.endswith('memory_attn'):
                self.handles.append(module.register_forward_hook(self._layer_hook(name)))
            if type(module).__name__ == 'MAPSMask2FormerHead':
                self.handles.append(module.register_forward_hook(self._head_hook))

    def _head_hook(self, module, args, output):
        for sample in args[1]:
            if 'retrieval' in sample:
                self.retrievals.append((int(sample.metainfo['img_id']),
                                        sample.retrieval.image_ids[0].tolist()))

    def _layer_hook(self, name):
        def hook(module, args, output):
            torch = self.torch
            query, memory = args[0], args[1]
            mask = args[2] if len(args) > 2 else None
            if mask is None:
                mask = torch.zeros(memory.shape[:2], dtype=torch.bool)
            heads, dims = module.num_heads, module.embed_dims // module.num_heads
            b, n, _ = query.shape
            q = module.q_proj(query).view(b, n, heads, dims).transpose(1, 2)
            k = module.k_proj(memory).view(b, -1, heads, dims).transpose(1, 2)
            centre = self.centre_of(name) if self.centre_of else memory.new_zeros(())
            v = (memory - centre.to(memory)) @ module.v_proj.weight.t()  # centred, no bias
            logits = (q @ k.transpose(-2, -1) / math.sqrt(dims))
            logits = logits.masked_fill(mask[:, None, None], float('-inf'))
            weights = logits.softmax(-1)
            valid = (~mask).sum(1).clamp(min=1).float()  # (B,)
            entropy = -(weights.clamp_min(1e-12).log() * weights).nansum(-1)  # (B, h, N)
            vn = torch.nn.functional.normalize(v, dim=-1)
            cos = vn @ vn.transpose(1, 2)
            pair = (~mask)[:, :, None] & (~mask)[:, None, :]
            pair &= ~torch.eye(mask.shape[1], dtype=torch.bool)[None]
            s = self.stats[name]
            s['count'] += b
            s['query_norm'] += float(query.norm(dim=-1).mean(1).sum())
            s['update_norm'] += float((output - query).norm(dim=-1).mean(1).sum())
            s['max_weight'] += float(weights.max(-1).values.mean((1, 2)).sum())
            s['entropy'] += float(entropy.mean((1, 2)).sum())
            s['uniform_entropy'] += float(valid.log().sum())
            s['value_spread'] += float(((cos * pair).sum((1, 2)) /
                                        pair.sum((1, 2)).clamp(min=1)).sum())
        return hook

    def summary(self):
        out = {}
        for name, s in self.stats.items():
            c = max(s['count'], 1)
            keys = ('query_norm', 'update_norm', 'max_weight', 'entropy', 'uniform_entropy',
                    'value_spread')
            row = {key: s[key] / c for key in keys}
            row['update_ratio'] = row['update_norm'] / max(row['query_norm'], 1e-12)
            out[name] = row
        return out


def main(argv=None):
    args = parse_args(argv)
    from mmengine.runner import Runner

    from mmmaps.utils.tool_utils import load_tool_config
    cfg = load_tool_config(args.config, args.cfg_options, args.work_dir, 'none')
    cfg.load_from = args.checkpoint
    runner = Runner.from_cfg(cfg)
    probe = UsageProbe(runner.model, memory_value_means(runner.model))
    if not probe.handles:
        raise ValueError(f'{args.config} builds no MAPS memory attention to probe')
    metrics = runner.test()
    report = dict(config=args.config, checkpoint=args.checkpoint, layers=probe.summary(),
                  metrics={k: float(v) for k, v in metrics.items()})
    query_scenes, memory_scenes = ann_scenes(cfg, 'test'), ann_scenes(cfg, 'train')
    if query_scenes and memory_scenes and probe.retrievals:
        same = [memory_scenes.get(r) == query_scenes[q] for q, rows in probe.retrievals
                for r in rows if r >= 0]
        report['retrieved_scene_type_precision'] = sum(same) / max(len(same), 1)
    print(f'\nMemory usage of {args.checkpoint} on the test split:')
    print(f'{"layer":44s} {"|q|":>6s} {"|upd|":>6s} {"ratio":>6s} {"maxw":>5s} '
          f'{"H":>5s} {"H_unif":>6s} {"v cos":>6s}')
    for name, row in report['layers'].items():
        print(f'{name:44s} {row["query_norm"]:6.2f} {row["update_norm"]:6.2f} '
              f'{row["update_ratio"]:6.3f} {row["max_weight"]:5.2f} {row["entropy"]:5.2f} '
              f'{row["uniform_entropy"]:6.2f} {row["value_spread"]:6.3f}')
    if 'retrieved_scene_type_precision' in report:
        print(f'retrieved scenes of the query\'s scene type: '
              f'{report["retrieved_scene_type_precision"]:.3f}')
    out = osp.join(cfg.work_dir, 'memory_usage.json')
    os.makedirs(cfg.work_dir, exist_ok=True)
    with open(out, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
