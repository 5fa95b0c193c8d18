"""Near-duplicate leaks: a val picture re-saved as JPEG (other bytes, so another picture to the
content identity), renumbered and appended to the memory.

Issue 29: the audit said ``"leak": false`` and exited 0, and at test time each val image
retrieved its own copy (scene_sim 1.0000) without a word. Now the audit reports
``near_duplicates`` (``leak``: true, exit 3) and the MemoryHook warns at evaluation.
"""
import hashlib
import json
import os
import os.path as osp

import cv2
import pytest

from tests.conftest import MEMORY_CFG, load_config_with_root
from tests.test_tools.test_audit_memory import _ann, _append, audit


def _sha256_tree(*folders):
    out = {}
    for folder in folders:
        for base, _, files in os.walk(folder):
            for name in files:
                path = osp.join(base, name)
                with open(path, 'rb') as f:
                    out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope='module')
def with_jpeg_copies(synthetic_root, synthetic_memory, tmp_path_factory):
    """The tiny memory + every val picture re-saved as JPEG q97 under ids + 100000."""
    folder = tmp_path_factory.mktemp('near_duplicates')
    images = folder / 'images'
    images.mkdir()
    val = _ann(synthetic_root, 'val')
    for image in val['images']:
        picture = cv2.imread(osp.join(synthetic_root, 'val', image['file_name']))
        cv2.imwrite(str(images / image['file_name']), picture, [cv2.IMWRITE_JPEG_QUALITY, 97])
    renumbered = json.loads(json.dumps(val))
    for image in renumbered['images']:
        image['id'] += 100000
    for ann in renumbered['annotations']:
        ann['image_id'] += 100000
    source = str(folder / 'renumbered_val.json')
    with open(source, 'w') as f:
        json.dump(renumbered, f)
    out = str(folder / 'appended')
    _append(synthetic_root, synthetic_memory, source, str(images),
            osp.join(synthetic_root, 'annotations', 'panoptic_val'), out)
    return out, val


def test_audit_reports_near_duplicates_as_a_leak(synthetic_root, synthetic_memory,
                                                 with_jpeg_copies):
    out, val = with_jpeg_copies
    before = _sha256_tree(synthetic_root, synthetic_memory, out)
    code, report = audit(synthetic_root, '--split', 'val', '--bank', out)
    assert code == 3, report  # near-duplicates only (1 is kept for leaks by file content)
    assert report['leak'] is True and report['leak_reasons'] == ['near_duplicates'], report
    # not the same bytes: the content identity finds nothing, the keys do
    assert report['in_memory'] == 0 and report['self_retrievals'] == 0, report
    assert report['near_duplicates'] == len(val['images']), report
    by_name = {im['file_name']: im['id'] for im in val['images']}
    for example in report['near_duplicate_examples']:
        # each val image's closest copy is its own JPEG copy (renumbered id)
        assert example['memory_image_id'] == by_name[osp.basename(example['image'])] + 100000
        assert example['similarity'] >= report['near_duplicate_threshold']
    assert _sha256_tree(synthetic_root, synthetic_memory, out) == before


class _Logger:
    def __init__(self):
        self.records = []

    def info(self, message):
        self.records.append(('INFO', message))

    def warning(self, message):
        self.records.append(('WARNING', message))


class _Runner:
    def __init__(self):
        self.logger = _Logger()


def _evaluate(hook_memory, paths):
    """Run the MemoryHook over the predictions' retrievals of ``paths`` as a test loop does
    (two iterations, then the epoch end); returns the WARNING messages."""
    import torch
    from mmdet.registry import HOOKS
    from mmdet.structures import DetDataSample
    images = [torch.from_numpy(cv2.imread(p)[..., ::-1].transpose(2, 0, 1).copy()).float()
              for p in paths]
    result = hook_memory.retrieve(images, paths, training=False, with_objects=False)
    samples = []
    for index, path in enumerate(paths):
        sample = DetDataSample(metainfo=dict(img_path=path))
        sample.set_metainfo(dict(retrieval=result.select(index).without_values()))
        samples.append(sample)
    hook = HOOKS.build(dict(type='MemoryHook'))
    hook.memory = hook_memory
    runner = _Runner()
    hook.after_test_iter(runner, 0, outputs=samples[:2])
    hook.after_test_iter(runner, 1, outputs=samples[2:])
    hook.after_test_epoch(runner)
    return [m for level, m in runner.logger.records if level == 'WARNING']


def test_hook_warns_when_evaluation_retrieves_a_near_duplicate(synthetic_root, synthetic_memory,
                                                               with_jpeg_copies):
    """What tools/test.py runs: the MemoryHook sees each prediction's retrieval; a score at or
    above the threshold is a WARNING naming the image (once), then a count at the end."""
    from mmdet.utils import register_all_modules

    import mmmaps  # noqa: F401
    from mmmaps.memory import build_external_memory
    register_all_modules()
    out, val = with_jpeg_copies
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root)
    paths = [osp.join(synthetic_root, 'val', im['file_name']) for im in val['images']]
    # the memory without the copies: distinct pictures only, no warning
    assert _evaluate(build_external_memory(cfg.memory, root=synthetic_memory, device='cpu'),
                     paths) == []
    warnings = _evaluate(build_external_memory(cfg.memory, root=out, device='cpu'), paths)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f'near-duplicate retrieval: {paths[0]} retrieved memory image '
                                  f'{val["images"][0]["id"] + 100000} with scene similarity')
    assert (f'{len(paths)} of the {len(paths)} evaluated images retrieved a memory image with '
            'scene similarity >=') in warnings[1]
