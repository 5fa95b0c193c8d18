"""Strict dataset checks (mmmaps.datasets.validation), tools/analysis/check_dataset.py and
the memory builder's --skip-invalid-images, on corrupted copies of the synthetic dataset."""
import importlib.util
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from mmmaps.datasets.validation import DatasetValidationError, check_panoptic_split

from ..conftest import MEMORY_CFG, REPO_ROOT, load_config_with_root

CHECK_TOOL = osp.join(REPO_ROOT, 'tools', 'analysis', 'check_dataset.py')
BUILD_TOOL = osp.join(REPO_ROOT, 'tools', 'build_memory.py')
OPTIONS = {'memory.build.chunk_size': 3, 'memory.build.num_workers': 0}


@pytest.fixture(scope='module')
def clean_root(tmp_path_factory):
    from mmmaps.datasets import generate_synthetic_panoptic
    root = str(tmp_path_factory.mktemp('validation') / 'clean')
    generate_synthetic_panoptic(root, num_train=5, num_val=1, seed=3, size=(64, 64),
                                progress=False)
    return root


@pytest.fixture
def data(clean_root, tmp_path):
    """A fresh copy of the clean dataset, with helpers to corrupt its train split."""
    root = str(tmp_path / 'data')
    shutil.copytree(clean_root, root)
    return Split(root)


class Split:
    """The train split of a synthetic copy: its JSON (edited in place) and files."""

    def __init__(self, root):
        self.root = root
        self.ann_file = osp.join(root, 'annotations', 'panoptic_train.json')
        self.img_dir = osp.join(root, 'train')
        self.seg_dir = osp.join(root, 'annotations', 'panoptic_train')
        with open(self.ann_file) as f:
            self.panoptic = json.load(f)

    def save(self):
        with open(self.ann_file, 'w') as f:
            json.dump(self.panoptic, f)

    def image(self, n):
        return self.panoptic['images'][n]

    def ann(self, n):
        return self.panoptic['annotations'][n]

    def png(self, n):
        return osp.join(self.seg_dir, self.ann(n)['file_name'])

    def ids(self, n):
        """(H, W) segment ids of annotation ``n``'s PNG (R + 256 G + 256^2 B)."""
        rgb = np.asarray(Image.open(self.png(n)).convert('RGB')).astype(np.int64)
        return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]

    def write_ids(self, n, ids):
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb, 'RGB').save(self.png(n))

    def check(self, **kwargs):
        return check_panoptic_split(self.ann_file, self.img_dir, self.seg_dir, **kwargs)


def found(problems):
    return sorted((p['check'], p['image_id'], osp.basename(p['file'])) for p in problems)


def corrupt_segment_absent(d):
    """Paint the second listed segment of image 0 with the first one's id."""
    ids = d.ids(0)
    first, second = (s['id'] for s in d.ann(0)['segments_info'][:2])
    d.write_ids(0, np.where(ids == second, first, ids))
    return [('segment_not_in_png', d.image(0)['id'], d.ann(0)['file_name'])]


def corrupt_unlisted_png_id(d):
    d.ann(1)['segments_info'].pop()
    d.save()
    return [('unlisted_png_id', d.image(1)['id'], d.ann(1)['file_name'])]


def corrupt_grey16(d):
    """Same ids, saved as one 16-bit grey channel (not panopticapi's RGB encoding)."""
    ids = d.ids(2)
    assert ids.max() < 65536
    cv2.imwrite(d.png(2), ids.astype(np.uint16))
    assert Image.open(d.png(2)).mode.startswith('I')
    return [('png_encoding', d.image(2)['id'], d.ann(2)['file_name'])]


def corrupt_rgb48(d):
    """Same ids in a 16-bit-per-channel RGB PNG (PIL would read it as 8-bit RGB)."""
    ids = d.ids(2)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint16)
    cv2.imwrite(d.png(2), rgb[..., ::-1])
    assert Image.open(d.png(2)).mode == 'RGB'
    return [('png_encoding', d.image(2)['id'], d.ann(2)['file_name'])]


def corrupt_palette(d):
    Image.open(d.png(2)).convert('P').save(d.png(2))
    return [('png_encoding', d.image(2)['id'], d.ann(2)['file_name'])]


def corrupt_duplicate_id(d):
    """Image 1 takes image 0's id (annotation too): mmdet would pool both on one PNG."""
    dup = d.image(0)['id']
    d.image(1)['id'] = d.ann(1)['image_id'] = dup
    d.save()
    return [('duplicate_image_id', dup, 'panoptic_train.json'),
            ('duplicate_annotation', dup, 'panoptic_train.json')]


def corrupt_duplicate_file_name(d):
    d.image(3)['file_name'] = d.image(4)['file_name']
    d.save()
    name = 'panoptic_train.json'
    # image 3 now points at image 4's picture, whose objects its PNG does not match
    return [('duplicate_file_name', d.image(3)['id'], name),
            ('duplicate_file_name', d.image(4)['id'], name)]


def corrupt_annotation_without_image(d):
    orphan = max(i['id'] for i in d.panoptic['images']) + 100
    d.panoptic['annotations'].append(dict(d.ann(0), image_id=orphan))
    d.save()
    return [('annotation_without_image', orphan, 'panoptic_train.json')]


def corrupt_unknown_category(d):
    d.ann(3)['segments_info'][0]['category_id'] = 999
    d.save()
    return [('unknown_category', d.image(3)['id'], d.ann(3)['file_name'])]


def corrupt_degenerate(d):
    """Image 4 becomes 1x1 px (image, PNG and JSON agree: only the size is wrong)."""
    seg = d.ann(4)['segments_info'][0]
    d.ann(4)['segments_info'] = [dict(seg, area=1, bbox=[0, 0, 1, 1])]
    d.image(4).update(width=1, height=1)
    cv2.imwrite(osp.join(d.img_dir, d.image(4)['file_name']), np.zeros((1, 1, 3), np.uint8))
    d.write_ids(4, np.full((1, 1), seg['id'], np.int64))
    d.save()
    return [('degenerate_image', d.image(4)['id'], d.image(4)['file_name'])]


def corrupt_png_size(d):
    d.write_ids(1, d.ids(1)[:, :60])
    ids = set(np.unique(d.ids(1)).tolist())
    d.ann(1)['segments_info'] = [s for s in d.ann(1)['segments_info'] if s['id'] in ids]
    d.save()
    return [('size_mismatch', d.image(1)['id'], d.ann(1)['file_name'])]


CORRUPTIONS = [corrupt_segment_absent, corrupt_unlisted_png_id, corrupt_grey16, corrupt_rgb48,
               corrupt_palette,
               corrupt_duplicate_id, corrupt_duplicate_file_name,
               corrupt_annotation_without_image, corrupt_unknown_category, corrupt_degenerate,
               corrupt_png_size]


def test_clean_synthetic_split_passes(data):
    result = data.check()
    assert result['problems'] == [] and result['dropped_image_ids'] == []
    assert result['panoptic'] == data.panoptic


@pytest.mark.parametrize('corrupt', CORRUPTIONS, ids=lambda f: f.__name__[8:])
def test_each_defect_is_found_and_named(data, corrupt, tmp_path):
    expected = corrupt(data)
    with pytest.raises(DatasetValidationError) as info:
        data.check()
    assert found(info.value.problems) == sorted(expected)
    message = str(info.value)
    for check, image_id, name in expected:
        assert f'[{check}] image id {image_id}, ' in message and name in message, message
    assert f'{len(expected)} problems' in message and '--skip-invalid-images' in message

    report = str(tmp_path / 'report.json')
    result = data.check(skip_invalid=True, report_file=report)
    dropped = sorted({e[1] for e in expected})
    assert result['dropped_image_ids'] == dropped
    kept = [i['id'] for i in result['panoptic']['images']]
    assert kept == [i['id'] for i in data.panoptic['images'] if i['id'] not in dropped]
    assert not {a['image_id'] for a in result['panoptic']['annotations']} & set(dropped)
    saved = json.load(open(report))
    assert saved['dropped_image_ids'] == dropped
    assert found(saved['problems']) == sorted(expected)


def test_problem_message_says_what_was_expected(data):
    corrupt_grey16(data)
    corrupt_degenerate(data)
    corrupt_unknown_category(data)
    with pytest.raises(DatasetValidationError) as info:
        data.check()
    text = str(info.value)
    assert 'panoptic PNG is 16-bit grey, expected 8-bit RGB with id = R + 256 G' in text, text
    assert 'image is 1x1 px, expected at least 2 px a side' in text
    assert 'category_id 999, expected one of the categories' in text
    assert osp.join(data.seg_dir, data.ann(2)['file_name']) in text


def test_config_classes_limit_the_known_categories(data):
    from mmmaps.datasets import CLASSES
    result = data.check(classes=CLASSES, skip_invalid=True)
    assert result['problems'] == []
    used = {s['category_id'] for s in data.ann(0)['segments_info']}
    names = {c['id']: c['name'] for c in data.panoptic['categories']}
    result = data.check(classes=[c for c in CLASSES if c != names[min(used)]],
                        skip_invalid=True)
    assert {p['check'] for p in result['problems']} == {'unknown_category'}
    assert data.image(0)['id'] in result['dropped_image_ids']


def run(args, root):
    path = os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')]))
    env = dict(os.environ, MMMAPS_SYNTHETIC_ROOT=root + '/', OMP_NUM_THREADS='1',
               PYTHONPATH=path)
    return subprocess.run([sys.executable] + args, cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_check_dataset_tool(data, tmp_path):
    proc = run([CHECK_TOOL, MEMORY_CFG, '--split', 'train'], data.root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'panoptic_train.json: 5 images, no problems' in proc.stdout

    expected = corrupt_grey16(data) + corrupt_duplicate_id(data)
    report = str(tmp_path / 'problems.json')
    proc = run([CHECK_TOOL, MEMORY_CFG, '--split', 'train', '--report', report], data.root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f'image id {data.image(2)["id"]}, {data.png(2)}' in proc.stdout, proc.stdout
    assert f'image id {data.image(0)["id"]}, {data.ann_file}' in proc.stdout, proc.stdout
    assert '2 of 5 images have problems' in proc.stdout
    assert found(json.load(open(report))['problems']) == sorted(expected)


def test_check_dataset_reads_the_split_of_the_config(data, monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location('check_dataset_tool', CHECK_TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    main = module.main
    corrupt_unknown_category(data)
    monkeypatch.setenv('MMMAPS_SYNTHETIC_ROOT', data.root + '/')
    report = str(tmp_path / 'report.json')
    assert main([MEMORY_CFG, '--split', 'val', '--report', report]) == 0
    assert not osp.exists(report)
    assert main([MEMORY_CFG, '--split', 'train', '--report', report]) == 1
    saved = json.load(open(report))
    assert saved['ann_file'] == data.ann_file
    assert found(saved['problems']) == [
        ('unknown_category', data.image(3)['id'], data.ann(3)['file_name'])]


def test_builder_refuses_invalid_data(data, tmp_path):
    from mmmaps.memory.builder import MemoryBuilder
    expected = []
    for corrupt in (corrupt_segment_absent, corrupt_unknown_category, corrupt_degenerate):
        expected += corrupt(data)
    cfg = load_config_with_root(MEMORY_CFG, data.root + '/', OPTIONS)
    with pytest.raises(DatasetValidationError) as info:
        MemoryBuilder(cfg, out=str(tmp_path / 'memory'), device='cpu')
    assert found(info.value.problems) == sorted(expected)
    assert ('segment_not_in_png', data.image(0)['id'], data.ann(0)['file_name']) in expected


def test_builder_never_drops_a_segment_silently(synthetic_root, tmp_path):
    """Records that escaped validation: a listed segment without pixels stops the build."""
    from mmmaps.memory.builder import MemoryBuildError, MemoryBuilder
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root, OPTIONS)
    builder = MemoryBuilder(cfg, out=str(tmp_path / 'memory'), device='cpu')
    record = builder.records[1]
    record['segments'].append((123456, 0, True))
    builder.prepare(resume=False, force=False)
    with pytest.raises(MemoryBuildError,
                       match=r'segments \[123456\] are listed but have no pixel') as info:
        builder.encode_chunks(progress=False)
    assert record['seg_map_path'] in str(info.value)
    assert f'image id {record["img_id"]}' in str(info.value)


def test_build_memory_tool_strict_then_skip(data, tmp_path):
    expected = corrupt_grey16(data) + corrupt_duplicate_id(data) + corrupt_unknown_category(data)
    out = str(tmp_path / 'memory')
    args = [BUILD_TOOL, MEMORY_CFG, '--out', out, '--device', 'cpu', '--cfg-options',
            'memory.build.num_workers=0', 'memory.build.chunk_size=3']
    proc = run(args, data.root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'build_memory.py: error: ' in proc.stderr and '4 problems in 3 images' in proc.stderr
    assert f'[png_encoding] image id {data.image(2)["id"]}, {data.png(2)}' in proc.stderr
    assert not osp.exists(out) and not osp.exists(out + '.invalid_images.json')

    proc = run(args + ['--skip-invalid-images'], data.root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dropped = sorted({e[1] for e in expected})
    report = json.load(open(out + '.invalid_images.json'))
    assert report['dropped_image_ids'] == dropped
    assert found(report['problems']) == sorted(expected)
    assert report['dropped_files'][str(data.image(0)['id'])] == [
        data.image(0)['file_name'], data.image(1)['file_name']]
    from mmmaps.memory import MemoryRoot
    memory = MemoryRoot(out)
    kept = [i['id'] for i in data.panoptic['images'] if i['id'] not in dropped]
    assert sorted(memory.scene_bank.image_ids.tolist()) == sorted(kept)
    assert memory.source['skipped_invalid_images']['image_ids'] == dropped
    # every listed segment of the kept images is in the object bank
    objects = memory.object_bank
    for row, image_id in enumerate(objects.image_ids.tolist()):
        ann = next(a for a in data.panoptic['annotations'] if a['image_id'] == image_id)
        sl = objects.value_slice(row)
        assert objects.extras['segment_ids'][sl].tolist() == [
            s['id'] for s in ann['segments_info']]
