"""Train MAPS on your own dataset, the README's whole path, on a dataset unlike the bundled one.

The dataset: the synthetic generator's images and PNGs with other class names, sparse
category ids and one thing class merged into another (12 classes: 6 things, 6 stuff;
the bundled data and the "trained Mask2Former" have 13). Then, as a user would, each a
separate tool run: tools/misc/dataset_config.py -> tools/analysis/check_dataset.py ->
tools/build_memory.py -> tools/train.py from a Mask2Former checkpoint (classifier
re-initialised, MAPS-only tensors listed) -> tools/test.py -> demo/image_demo.py.
"""
import json
import os.path as osp
import re

import torch

from mmmaps.utils.checkpoint_loading import safe_torch_load

from ..conftest import REPO_ROOT, TINY_M2F, run_tool

BASE = osp.join(REPO_ROOT, 'configs', 'maps', 'maps_r18_synthetic-panoptic_from-mask2former.py')
NO_WORKERS = [f'{split}_dataloader.{key}' for split in ('train', 'val', 'test')
              for key in ('num_workers=0', 'persistent_workers=False')]


def make_own_dataset(folder: str):
    """Returns {new category id: (name, isthing)} of the rewritten dataset."""
    from mmmaps.datasets import generate_synthetic_panoptic
    generate_synthetic_panoptic(folder, num_train=8, num_val=3, seed=5, size=(64, 64),
                                progress=False)
    new_ids = {}
    for split in ('train', 'val'):
        path = osp.join(folder, 'annotations', f'panoptic_{split}.json')
        with open(path) as f:
            data = json.load(f)
        cats = sorted(data['categories'], key=lambda c: c['id'])
        things = [c for c in cats if c['isthing']]
        merged_into = {things[-1]['id']: things[-2]['id']}  # the last thing joins another
        new_ids = {c['id']: 1000 + 37 * i for i, c in enumerate(cats)
                   if c['id'] not in merged_into}
        new_ids.update({old: new_ids[into] for old, into in merged_into.items()})
        data['categories'] = [dict(c, id=new_ids[c['id']], name=f'kind_{new_ids[c["id"]]}')
                              for c in cats if c['id'] not in merged_into]
        for ann in data['annotations']:
            for seg in ann['segments_info']:
                seg['category_id'] = new_ids[seg['category_id']]
        with open(path, 'w') as f:
            json.dump(data, f)
    return {c['id']: (c['name'], bool(c['isthing'])) for c in data['categories']}


def test_train_maps_on_your_own_dataset(tmp_path):
    data = str(tmp_path / 'own')
    categories = make_own_dataset(data)
    num_things = sum(isthing for _, isthing in categories.values())
    assert (len(categories), num_things) == (12, 6)
    config = str(tmp_path / 'configs' / 'maps_own.py')
    memory = str(tmp_path / 'memory' / 'own_train')
    run_tool(['tools/misc/dataset_config.py', f'{data}/annotations/panoptic_train.json',
              '--val-ann', f'{data}/annotations/panoptic_val.json', '--train-img',
              f'{data}/train', '--val-img', f'{data}/val', '--base', BASE, '--out', config,
              '--memory-root', memory], data)
    for split in ('train', 'val'):
        run_tool(['tools/analysis/check_dataset.py', config, '--split', split], data)

    m2f = str(tmp_path / 'mask2former.pth')  # a Mask2Former of the bundled 13 classes
    run_tool(['tools/misc/init_checkpoint.py', TINY_M2F, m2f], data)
    run_tool(['tools/build_memory.py', config], data)
    work = str(tmp_path / 'work')
    proc = run_tool(['tools/train.py', config, '--work-dir', work, '--cfg-options',
                     f'load_from={m2f}', 'train_cfg.max_iters=2', 'train_cfg.val_interval=100',
                     'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=2']
                    + NO_WORKERS, data)
    log = proc.stdout + proc.stderr
    assert 'the checkpoint classifies 13 classes, this model 12' in log
    assert re.search(r'\d+ MAPS-only tensors are not in the checkpoint', log)
    ckpt = osp.join(work, 'iter_2.pth')
    state = safe_torch_load(ckpt, map_location='cpu')['state_dict']
    assert state['panoptic_head.cls_embed.weight'].shape[0] == 12 + 1
    assert state['panoptic_head.query_feat.weight'].shape == torch.load(
        m2f, weights_only=True)['state_dict']['panoptic_head.query_feat.weight'].shape

    out = str(tmp_path / 'pred')
    run_tool(['tools/test.py', config, ckpt, '--work-dir', work, '--panoptic-out', out]
             + ['--cfg-options'] + NO_WORKERS, data)
    with open(osp.join(work, 'metrics.json')) as f:
        assert 'coco_panoptic/PQ' in f.read()
    with open(out + '.panoptic.json') as f:
        predicted = {s['category_id'] for a in json.load(f)['annotations']
                     for s in a['segments_info']}
    assert predicted <= set(categories)  # the dataset's own (sparse) category ids

    image = osp.join(data, 'val', sorted(__import__('os').listdir(osp.join(data, 'val')))[0])
    png = str(tmp_path / 'demo.png')
    run_tool(['demo/image_demo.py', image, config, ckpt, '--out-file', png, '--device', 'cpu'],
             data)
    assert osp.getsize(png) > 0
