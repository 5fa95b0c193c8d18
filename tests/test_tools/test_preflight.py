"""tools/train.py checks what the test tools check, before the run (issue 29).

- the dataset check of tools/analysis/check_dataset.py on the train (and val) split, cached
  by the files' identities, with --skip-invalid-images;
- the model's class counts against the dataset's metainfo (train, test and the demo);
- ``--work-dir`` that is a file.

Independent references: hand-made defects (their file and check are what the error must
name), the image ids dropped by hand, and the sha256 of every user file before and after.
"""
import hashlib
import json
import multiprocessing
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, TINY_M2F, load_config_with_root, load_tool, tree_sha256
from tests.test_datasets.test_validation import (Split, corrupt_grey16, corrupt_png_size,
                                                 corrupt_segment_absent)

TINY_PSF = osp.join(REPO_ROOT, 'configs', 'panoptic_segformer',
                    'panoptic-segformer_r18_synthetic.py')
NO_WORKERS = [f'{split}_dataloader.{key}' for split in ('train', 'val', 'test')
              for key in ('num_workers=0', 'persistent_workers=False')]
ONE_ITER = ['train_cfg.max_iters=1', 'train_cfg.val_interval=10',
            'default_hooks.checkpoint.interval=1', 'train_dataloader.batch_size=2'] + NO_WORKERS



@pytest.fixture(autouse=True)
def unformatted_config_dumps(monkeypatch):
    """The Runner yapf-formats the config it logs and dumps (most of a tiny run's start-up
    time); the runs here keep the text as it is."""
    import mmengine.config.config as config_module
    monkeypatch.setattr(config_module, 'FormatCode', lambda text, **kwargs: (text, False))

@pytest.fixture
def data(synthetic_root, tmp_path, monkeypatch):
    """A copy of the session's synthetic dataset that the configs read, and a fresh cache."""
    root = str(tmp_path / 'data')
    shutil.copytree(synthetic_root, root)
    monkeypatch.setenv('MMMAPS_SYNTHETIC_ROOT', root + '/')
    monkeypatch.setenv('MMMAPS_CACHE', str(tmp_path / 'cache'))
    return Split(root)


def corrupt_unknown_category(d):
    d.ann(3)['segments_info'][0]['category_id'] = 99  # mmdet: bare KeyError: 99
    d.save()
    return 'unknown_category', d.png(3)


def corrupt_empty(d):
    d.panoptic.update(images=[], annotations=[])  # mmdet: need at least one array to ...
    d.save()
    return 'lists no images', d.ann_file


def _named(corrupt):
    def run(d):
        check, _, name = corrupt(d)[0]
        return check, name
    run.__name__ = corrupt.__name__
    return run


DEFECTS = [_named(corrupt_grey16), _named(corrupt_segment_absent), corrupt_unknown_category,
           _named(corrupt_png_size), corrupt_empty]


@pytest.mark.parametrize('corrupt', DEFECTS, ids=lambda c: c.__name__)
def test_train_refuses_data_the_dataset_check_rejects(data, corrupt, tmp_path):
    check, name = corrupt(data)
    before = tree_sha256(data.root)
    train = load_tool('tools/train.py')
    from mmmaps.datasets.validation import DatasetValidationError
    with pytest.raises(DatasetValidationError) as err:
        train.main([TINY_M2F, '--work-dir', str(tmp_path / 'w'), '--cfg-options'] + ONE_ITER)
    message = str(err.value)
    assert check in message and osp.basename(name) in message, message
    assert data.ann_file in message
    assert tree_sha256(data.root) == before
    assert not osp.exists(tmp_path / 'w' / 'iter_1.pth')


def test_train_tool_exits_1_with_one_error_naming_the_png(data, tmp_path):
    _, _, png = corrupt_grey16(data)[0]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        REPO_ROOT, os.environ.get('PYTHONPATH')])))
    proc = subprocess.run([sys.executable, 'tools/train.py', TINY_M2F, '--work-dir',
                           str(tmp_path / 'w'), '--cfg-options'] + ONE_ITER,
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    error = proc.stderr[proc.stderr.index('train.py: error: '):]
    assert f'[png_encoding] image id {data.image(2)["id"]}, {data.png(2)}' in error
    assert 'panoptic PNG is 16-bit grey' in error and '--skip-invalid-images' in error
    assert png == data.ann(2)['file_name']


def test_skip_invalid_images_trains_without_them(data, tmp_path):
    corrupt_grey16(data)  # image index 2
    corrupt_unknown_category(data)  # image index 3
    dropped = sorted([data.image(2)['id'], data.image(3)['id']])
    before = tree_sha256(data.root)
    work = str(tmp_path / 'w')
    train = load_tool('tools/train.py')
    train.main([TINY_M2F, '--work-dir', work, '--skip-invalid-images', '--cfg-options']
               + ONE_ITER)
    assert osp.isfile(osp.join(work, 'iter_1.pth'))
    with open(osp.join(work, 'train_dataloader.dataset.invalid_images.json')) as f:
        report = json.load(f)
    assert report['dropped_image_ids'] == dropped
    assert report['ann_file'] == data.ann_file
    # the run read a copy without exactly those images; the user's file is untouched
    dumped = [f for f in os.listdir(work) if f.endswith('.py')]
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(work, dumped[0]))
    used = cfg.train_dataloader.dataset.ann_file
    assert osp.isabs(used) and used != data.ann_file
    with open(used) as f:
        kept = {i['id'] for i in json.load(f)['images']}
    assert kept == {i['id'] for i in data.panoptic['images']} - set(dropped)
    assert tree_sha256(data.root) == before
    log = ''.join(open(osp.join(base, n)).read() for base, _, files in os.walk(work)
                  for n in files if n.endswith('.log'))
    assert f'{len(dropped)} of the {len(data.panoptic["images"])} images of' in log


def test_val_split_problems_are_refused_even_with_skip(data, tmp_path):
    val = osp.join(data.root, 'annotations', 'panoptic_val.json')
    with open(val) as f:
        panoptic = json.load(f)
    panoptic['annotations'][0]['segments_info'][0]['category_id'] = 99
    with open(val, 'w') as f:
        json.dump(panoptic, f)
    train = load_tool('tools/train.py')
    from mmmaps.datasets.validation import DatasetValidationError
    with pytest.raises(DatasetValidationError, match='unknown_category') as err:
        train.main([TINY_M2F, '--work-dir', str(tmp_path / 'w'), '--skip-invalid-images',
                    '--cfg-options'] + ONE_ITER)
    assert val in str(err.value) and 'val_dataloader.dataset' in str(err.value)


def _checked(paths, queue):
    from mmmaps.datasets.preflight import checked_split
    queue.put(checked_split(paths)['cached'])


def test_the_check_is_cached_by_file_identity_and_done_by_one_rank(data):
    """Two ranks start together: one checks, the other waits and reads its result; a
    changed PNG is checked again."""
    from mmmaps.datasets.preflight import checked_split
    paths = dict(ann_file=data.ann_file, img_dir=data.img_dir, seg_dir=data.seg_dir)
    ctx = multiprocessing.get_context('fork')
    queue = ctx.Queue()
    ranks = [ctx.Process(target=_checked, args=(paths, queue)) for _ in range(2)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(120)
    assert sorted(queue.get(timeout=5) for _ in ranks) == [False, True]
    assert checked_split(paths)['cached']
    corrupt_segment_absent(data)  # rewrites the PNG of image 0 (size or mtime change)
    result = checked_split(paths)
    assert not result['cached']
    assert [p['check'] for p in result['problems']] == ['segment_not_in_png']
    assert checked_split(paths)['cached'] and checked_split(paths)['problems']


def test_concatenated_datasets_are_each_checked(data):
    from mmmaps.datasets.preflight import check_run_datasets
    from mmmaps.datasets.validation import DatasetValidationError
    cfg = load_config_with_root(TINY_M2F, data.root + '/')
    clean = dict(cfg.train_dataloader.dataset)
    bad = dict(clean, ann_file='annotations/bad.json')
    data.ann_file = osp.join(data.root, 'annotations', 'bad.json')  # a second annotation file
    corrupt_unknown_category(data)
    cfg.train_dataloader.dataset = dict(type='ConcatDataset', datasets=[clean, bad])
    with pytest.raises(DatasetValidationError, match='unknown_category') as err:
        check_run_datasets(cfg)
    message = str(err.value)
    assert message.startswith(data.ann_file) and 'train_dataloader.dataset.datasets[1]' in message


# ------------------------------------------------------------------------- class counts
def test_train_test_and_demo_refuse_another_class_count(data, tmp_path):
    """13 classes in the dataset (7 things, 6 stuff), the model made for 12."""
    fewer = ['model.panoptic_head.num_stuff_classes=5',
             'model.panoptic_fusion_head.num_stuff_classes=5']
    ckpt = str(tmp_path / 'model.pth')
    open(ckpt, 'wb').close()  # never read: the counts are compared first
    image = osp.join(data.root, 'val', sorted(os.listdir(osp.join(data.root, 'val')))[0])
    runs = {
        'train': lambda: load_tool('tools/train.py').main(
            [TINY_M2F, '--work-dir', str(tmp_path / 'w'), '--cfg-options'] + fewer + ONE_ITER),
        'test': lambda: load_tool('tools/test.py').main(
            [TINY_M2F, ckpt, '--work-dir', str(tmp_path / 'w'), '--cfg-options'] + fewer
            + NO_WORKERS),
        'demo': lambda: load_tool('demo/image_demo.py').main(
            [image, TINY_M2F, ckpt, '--out-file', str(tmp_path / 'out.png'), '--device', 'cpu',
             '--cfg-options'] + fewer),
    }
    for tool, run in runs.items():
        with pytest.raises(ValueError) as err:
            run()
        message = str(err.value)
        assert 'model.panoptic_head.num_stuff_classes = 5' in message, (tool, message)
        assert 'has 6 stuff classes' in message, (tool, message)
    assert not osp.exists(tmp_path / 'out.png')


def test_panoptic_segformer_class_count_is_checked_too(data, tmp_path):
    ckpt = str(tmp_path / 'model.pth')
    open(ckpt, 'wb').close()
    test_tool = load_tool('tools/test.py')
    with pytest.raises(ValueError, match=r'model\.bbox_head\.num_things_classes = 6, but the '
                       r'dataset test_dataloader\.dataset has 7 thing classes'):
        test_tool.main([TINY_PSF, ckpt, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                        'model.bbox_head.num_things_classes=6'] + NO_WORKERS)


# ------------------------------------------------------------------------- work dir
def test_work_dir_that_is_a_file_is_named(data, tmp_path):
    work = tmp_path / 'results.txt'
    work.write_text('my notes\n')
    before = hashlib.sha256(work.read_bytes()).hexdigest()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        REPO_ROOT, os.environ.get('PYTHONPATH')])))
    proc = subprocess.run([sys.executable, 'tools/train.py', TINY_M2F, '--work-dir', str(work),
                           '--cfg-options'] + ONE_ITER, cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (f'train.py: error: --work-dir {work} is a file, expected a folder for '
                         'the logs and checkpoints: choose another --work-dir'), proc.stderr
    assert 'Traceback' not in proc.stderr
    assert hashlib.sha256(work.read_bytes()).hexdigest() == before
