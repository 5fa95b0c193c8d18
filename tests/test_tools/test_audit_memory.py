"""tools/analysis/audit_memory.py: in-memory counts and self-retrievals by image content.

The memory is built once from the session's synthetic train split; the audited datasets
reach the same pictures through other annotation files (re-indented, a subset, a renumbered
append), which id- or file-based guards do not recognise. Reference counts come from the
annotation files themselves.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

TINY_MAPS = osp.join(REPO_ROOT, 'configs', 'maps', 'maps_r18_synthetic-panoptic.py')


def _env(root):
    return dict(os.environ, MMMAPS_SYNTHETIC_ROOT=root, OMP_NUM_THREADS='1',
                PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT,
                                                         os.environ.get('PYTHONPATH')])))


def audit(root, *args):
    proc = subprocess.run([sys.executable, 'tools/analysis/audit_memory.py', TINY_MAPS, *args],
                          cwd=REPO_ROOT, env=_env(root), capture_output=True, text=True,
                          timeout=600)
    start = proc.stdout.find('{')
    assert start >= 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout[start:])


def _ann(root, split):
    with open(osp.join(root, 'annotations', f'panoptic_{split}.json')) as f:
        return json.load(f)


def _save(root, name, data, indent=None):
    path = osp.join(root, 'annotations', name)
    with open(path, 'w') as f:
        json.dump(data, f, indent=indent)
    return f'annotations/{name}'


def _append(root, parent, source_ann, img_prefix, seg_prefix, out):
    proc = subprocess.run(
        [sys.executable, 'tools/build_memory.py', TINY_MAPS, '--append', '--parent', parent,
         '--source-ann', source_ann, '--img-prefix', img_prefix, '--seg-prefix', seg_prefix,
         '--out', out, '--cfg-options', 'memory.build.num_workers=0'],
        cwd=REPO_ROOT, env=_env(root), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope='module')
def copies(synthetic_root):
    train = _ann(synthetic_root, 'train')
    half = dict(train, images=train['images'][:len(train['images']) // 2])
    keep = {im['id'] for im in half['images']}
    half['annotations'] = [a for a in train['annotations'] if a['image_id'] in keep]
    return dict(train=train, reindented=_save(synthetic_root, 'audit_reindented.json', train, 4),
                subset=_save(synthetic_root, 'audit_half.json', half), half=half)


def test_train_split_and_its_copies_never_retrieve_themselves(synthetic_root,
                                                              synthetic_memory, copies):
    num = len(copies['train']['images'])
    memory = f'memory.root={synthetic_memory}'
    for ann_file, expected in ((None, num), (copies['reindented'], num),
                               (copies['subset'], len(copies['half']['images']))):
        options = [memory] + ([f'train_dataloader.dataset.ann_file={ann_file}']
                              if ann_file else [])
        code, report = audit(synthetic_root, '--cfg-options', *options)
        assert code == 0, report
        assert report['images'] == expected and report['in_memory'] == expected, report
        assert report['self_retrievals'] == 0 and not report['leak'], report
        # training policy: keys from the key encoder (query_keys='model_input'), none cached
        assert report['cache_hits'] == 0 and report['query_keys'] == 'model_input', report


def test_renumbered_append_holds_every_picture_twice_and_still_never_self_retrieves(
        synthetic_root, synthetic_memory, copies, tmp_path):
    renumbered = json.loads(json.dumps(copies['train']))
    for image in renumbered['images']:
        image['id'] += 100000
    for ann in renumbered['annotations']:
        ann['image_id'] += 100000
    source = osp.join(synthetic_root, _save(synthetic_root, 'audit_renumbered.json', renumbered))
    out = str(tmp_path / 'appended')
    proc = _append(synthetic_root, synthetic_memory, source, osp.join(synthetic_root, 'train'),
                   osp.join(synthetic_root, 'annotations', 'panoptic_train'), out)
    assert 'already in' in proc.stdout + proc.stderr  # the builder says so
    code, report = audit(synthetic_root, '--bank', out)
    num = len(copies['train']['images'])
    assert code == 0 and report['images'] == num and report['in_memory'] == num, report
    assert report['self_retrievals'] == 0, report


def test_a_val_image_in_the_memory_is_a_leak(synthetic_root, synthetic_memory, tmp_path):
    code, clean = audit(synthetic_root, '--split', 'val', '--cfg-options',
                        f'memory.root={synthetic_memory}')
    val = _ann(synthetic_root, 'val')
    assert code == 0 and clean['in_memory'] == 0 and clean['images'] == len(val['images'])
    out = str(tmp_path / 'with_val')
    _append(synthetic_root, synthetic_memory,
            osp.join(synthetic_root, 'annotations', 'panoptic_val.json'),
            osp.join(synthetic_root, 'val'),
            osp.join(synthetic_root, 'annotations', 'panoptic_val'), out)
    code, report = audit(synthetic_root, '--split', 'val', '--bank', out)
    assert code == 1 and report['leak'], report
    assert report['in_memory'] == len(val['images'])
    # at test time nothing is excluded: a val image in the memory finds itself
    assert report['self_retrievals'] == len(val['images']), report
