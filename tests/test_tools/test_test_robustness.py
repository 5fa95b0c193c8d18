import glob
import importlib.util
import json
import os
import os.path as osp

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, TINY_M2F, load_config_with_root, run_tool  # noqa: E402

LOADERS = ['test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, osp.join(REPO_ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tool():
    return _load(osp.join('tools', 'test_robustness.py'), 'test_robustness_tool')


def test_corruption_sets():
    from imagecorruptions import get_corruption_names
    tool = _tool()
    benchmark = tool.resolve_corruptions(['benchmark'])
    # PSF Table 11, in its column order
    assert benchmark == ['motion_blur', 'defocus_blur', 'glass_blur', 'gaussian_blur',
                         'gaussian_noise', 'impulse_noise', 'shot_noise', 'speckle_noise',
                         'brightness', 'contrast', 'saturate', 'jpeg_compression',
                         'snow', 'spatter', 'fog', 'frost']
    everything = tool.resolve_corruptions(['all'])
    assert everything[:16] == benchmark
    assert sorted(everything) == sorted(get_corruption_names('all'))
    assert tool.resolve_corruptions(['common']) == get_corruption_names('common')
    assert tool.resolve_corruptions(['noise', 'fog', 'shot_noise']) == [
        'gaussian_noise', 'impulse_noise', 'shot_noise', 'speckle_noise', 'fog']
    assert tool.group_of('brightness') == 'digital' and tool.group_of('zoom_blur') == 'blur'
    with pytest.raises(ValueError, match='unknown corruption'):
        tool.resolve_corruptions(['rain'])
    with pytest.raises(SystemExit):
        tool.parse_args([TINY_M2F, 'x.pth', '--severities', '6'])


def test_pipeline_insertion(synthetic_root, tmp_path):
    tool = _tool()
    cfg = load_config_with_root(TINY_M2F, synthetic_root)
    cfg.work_dir = str(tmp_path)
    run = tool.setting_cfg(cfg, 'fog/severity_2', 'fog', 2, 5)
    steps = run.test_dataloader.dataset.pipeline
    assert steps[0]['type'] == 'LoadImageFromFile'
    assert steps[1] == dict(type='ImageCorruption', corruption='fog', severity=2, seed=5)
    assert len(steps) == len(cfg.test_dataloader.dataset.pipeline) + 1
    assert run.work_dir == osp.join(str(tmp_path), 'fog', 'severity_2')
    assert 'ImageCorruption' not in str(cfg.test_dataloader.dataset.pipeline)  # a copy
    with pytest.raises(ValueError, match='already has an ImageCorruption'):
        tool.load_image_index(run)
    cfg.test_dataloader.dataset.pipeline = cfg.test_dataloader.dataset.pipeline[1:]
    with pytest.raises(ValueError, match='no LoadImageFromFile'):
        tool.load_image_index(cfg)


def _first_input(config_file, root):
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    import mmmaps  # noqa: F401
    register_all_modules()
    cfg = load_config_with_root(config_file, root)
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    return dataset[0]['inputs'].numpy()


def test_tool_two_corruptions_one_severity(synthetic_root, tmp_path):
    import torch
    ckpt = str(tmp_path / 'init.pth')
    # the untrained weights, made in-process (saves an interpreter start-up)
    with torch.random.fork_rng():
        _load(osp.join('tools', 'misc', 'init_checkpoint.py'), 'init_checkpoint_tool').main(
            [TINY_M2F, ckpt])
    work = str(tmp_path / 'work')
    proc = run_tool(['tools/test_robustness.py', TINY_M2F, ckpt, '--corruptions',
                     'gaussian_noise', 'defocus_blur', '--severities', '2', '--seed', '3',
                     '--work-dir', work, '--cfg-options'] + LOADERS, synthetic_root)

    out_json = osp.join(work, 'robustness.json')
    with open(out_json) as f:
        report = json.load(f)
    assert report['complete'] is True
    assert report['corruptions'] == ['gaussian_noise', 'defocus_blur']
    assert report['severities'] == [2] and report['seed'] == 3
    assert report['transform']['pipeline_index'] == 1
    assert 0 <= report['clean']['summary']['PQ'] <= 100
    assert 'coco_panoptic/PQ' in report['clean']['metrics']
    for name in ('gaussian_noise', 'defocus_blur'):
        entry = report['corrupted'][name]['2']
        assert entry['corruption'] == dict(name=name, severity=2, seed=3)
        for key in ('PQ', 'AP', 'mIoU'):
            assert 0 <= entry['summary'][key] <= 100
        assert report['per_corruption'][name]['PQ'] == entry['summary']['PQ']
    assert report['mean']['PQ'] == pytest.approx(
        sum(report['per_corruption'][n]['PQ'] for n in report['corruptions']) / 2)

    stdout = proc.stdout
    assert '[robustness 1/3] evaluating clean' in stdout
    assert '[robustness 3/3] evaluating defocus_blur severity 2' in stdout
    table = stdout[stdout.rindex('Robustness (mean over severities'):]
    for row in ('| clean ', '| mean (2 corruptions) ', '| gaussian_noise ', '| defocus_blur ',
                'PQ per severity', 'PQ s2', '| AP ', '| mIoU '):
        assert row in table, row
    assert f'robustness results written to {out_json}' in stdout

    # every evaluation logged into its own sub-work-dir, with the config it really ran
    dumped = {}
    for tag in ('clean', 'gaussian_noise/severity_2', 'defocus_blur/severity_2'):
        sub = osp.join(work, tag)
        assert glob.glob(osp.join(sub, '*', '*.log')), tag
        dumped[tag] = osp.join(sub, osp.basename(TINY_M2F))
        assert osp.isfile(dumped[tag])
        with open(dumped[tag]) as f:
            text = f.read()
        assert ('ImageCorruption' in text) == (tag != 'clean')
    # ... and those configs feed the model different images: clean != corrupted
    clean = _first_input(dumped['clean'], synthetic_root)
    noisy = _first_input(dumped['gaussian_noise/severity_2'], synthetic_root)
    blurred = _first_input(dumped['defocus_blur/severity_2'], synthetic_root)
    assert clean.shape == noisy.shape == blurred.shape

    def sharpness(x):
        return np.abs(np.diff(x.astype(np.float64), axis=-1)).mean()
    assert sharpness(noisy) > sharpness(clean) > sharpness(blurred)


# conftest's synthetic set: 8 train images (ids 1-8), then the 4 val images (ids 9-12)
VAL_IDS = [9, 10, 11, 12]


def _read(path):
    with open(path) as f:
        return json.load(f)


def _ids(ann):
    return [img['id'] for img in ann['images']], sorted({a['image_id'] for a in ann['annotations']})


def test_subset_selection(synthetic_root, tmp_path):
    tool = _tool()
    ids_file = tmp_path / 'ids.txt'
    ids_file.write_text('# two val images\n12, 10\n10 11  # 10 again\n')
    assert tool.read_subset_ids(str(ids_file)) == [12, 10, 11]
    ids_file.write_text('12 ten\n')
    with pytest.raises(ValueError, match="'ten' is not an integer"):
        tool.read_subset_ids(str(ids_file))
    ids_file.write_text('# nothing\n')
    with pytest.raises(ValueError, match='no image ids'):
        tool.read_subset_ids(str(ids_file))
    with pytest.raises(SystemExit):  # one or the other
        tool.parse_args([TINY_M2F, 'x.pth', '--subset', '2', '--subset-ids', str(ids_file)])

    annotations = osp.join(synthetic_root, 'annotations')
    pan_file = osp.join(annotations, 'panoptic_val.json')
    ins_file = osp.join(annotations, 'instances_val.json')
    before = {f: open(f).read() for f in (pan_file, ins_file)}
    listing = sorted(glob.glob(osp.join(synthetic_root, '**'), recursive=True))
    assert _ids(_read(pan_file)) == (VAL_IDS, VAL_IDS)
    # the images listed in reverse id order: "smallest ids" is not "first in the file"
    reversed_ann = _read(pan_file)
    reversed_ann['images'] = reversed_ann['images'][::-1]
    reversed_file = str(tmp_path / 'panoptic_val_reversed.json')
    with open(reversed_file, 'w') as f:
        json.dump(reversed_ann, f)

    cfg = load_config_with_root(TINY_M2F, synthetic_root)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.test_dataloader.dataset.ann_file = reversed_file
    cfg.test_evaluator[0].ann_file = reversed_file
    subset = tool.restrict_to_subset(cfg, num=2)
    assert subset['image_ids'] == [9, 10] and (subset['num_images'], subset['of']) == (2, 4)
    out_pan = osp.join(cfg.work_dir, 'subset', 'panoptic_val_reversed.json')
    out_ins = osp.join(cfg.work_dir, 'subset', 'instances_val.json')
    assert cfg.test_dataloader.dataset.ann_file == out_pan
    assert cfg.test_evaluator[0].ann_file == out_pan  # the same file, written once
    assert cfg.test_evaluator[1].ann_file == out_ins
    assert 'ann_file' not in cfg.test_evaluator[2]  # PanopticSemSegMetric: per sample
    assert _ids(_read(out_pan)) == ([10, 9], [9, 10])
    assert _ids(_read(out_ins)) == ([9, 10], [9, 10])
    ins = _read(ins_file)
    assert _read(out_ins)['annotations'] == [a for a in ins['annotations']
                                             if a['image_id'] in (9, 10)]
    assert _read(out_ins)['categories'] == ins['categories']
    # the data are untouched, nothing was written next to them
    assert {f: open(f).read() for f in (pan_file, ins_file)} == before
    assert sorted(glob.glob(osp.join(synthetic_root, '**'), recursive=True)) == listing

    # the dataset the Runner will build holds exactly those images
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    import mmmaps  # noqa: F401
    register_all_modules()
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    assert sorted(dataset[i]['data_samples'].img_id for i in range(len(dataset))) == [9, 10]

    for num, ids, message in ((5, None, 'exceeds the 4 images'), (0, None, 'at least 1'),
                              (None, [9, 99, 7], '2 of the 3 subset image ids are not in')):
        cfg = load_config_with_root(TINY_M2F, synthetic_root)
        cfg.work_dir = str(tmp_path / 'bad')
        with pytest.raises(ValueError, match=message):
            tool.restrict_to_subset(cfg, num=num, ids=ids)
    # an evaluator's ann_file without one of the images
    ins['images'] = [img for img in ins['images'] if img['id'] != 10]
    short_file = str(tmp_path / 'instances_short.json')
    with open(short_file, 'w') as f:
        json.dump(ins, f)
    cfg.test_evaluator[1].ann_file = short_file
    with pytest.raises(ValueError, match='1 subset image ids are not in .*instances_short'):
        tool.restrict_to_subset(cfg, ids=[10, 12])


def test_tool_on_a_subset(synthetic_root, tmp_path):
    """--subset-ids end to end, with the evaluators writing what they evaluated: mmdet's
    CocoPanopticMetric with outfile_prefix checks that every image of its ann_file has a
    prediction, so the full val file would fail; PQ is recomputed with panopticapi."""
    import torch
    from panopticapi.evaluation import pq_compute
    ckpt = str(tmp_path / 'init.pth')
    with torch.random.fork_rng():
        _load(osp.join('tools', 'misc', 'init_checkpoint.py'), 'init_checkpoint_tool').main(
            [TINY_M2F, ckpt])
    ids_file = tmp_path / 'ids.txt'
    ids_file.write_text('12\n10\n')
    work = str(tmp_path / 'work')
    out = str(tmp_path / 'out')
    proc = run_tool(['tools/test_robustness.py', TINY_M2F, ckpt, '--corruptions', 'brightness',
                     '--severities', '1', '--subset-ids', str(ids_file), '--work-dir', work,
                     '--cfg-options', f'test_evaluator.0.outfile_prefix={out}/pan',
                     f'test_evaluator.1.outfile_prefix={out}/ins',
                     # untrained: no class probability reaches mmdet's 0.8
                     'model.test_cfg.object_mask_thr=0.0'] + LOADERS, synthetic_root)
    assert '[robustness] evaluating 2 of the 4 test images (listed image ids)' in proc.stdout
    report = _read(osp.join(work, 'robustness.json'))
    assert report['complete'] is True
    assert report['subset']['image_ids'] == [12, 10]
    # the files the last evaluation (brightness, severity 1) wrote
    pan = _read(osp.join(out, 'pan.panoptic.json'))
    assert sorted(a['image_id'] for a in pan['annotations']) == [10, 12]
    assert sorted(os.listdir(osp.join(out, 'pan.panoptic'))) == ['000000000010.png',
                                                                 '000000000012.png']
    assert any(a['segments_info'] for a in pan['annotations'])
    assert sorted({d['image_id'] for d in _read(osp.join(out, 'ins.segm.json'))}) == [10, 12]
    gt = _read(osp.join(synthetic_root, 'annotations', 'panoptic_val.json'))
    gt['images'] = [img for img in gt['images'] if img['id'] in (10, 12)]
    gt['annotations'] = [a for a in gt['annotations'] if a['image_id'] in (10, 12)]
    gt_file = str(tmp_path / 'gt_subset.json')
    with open(gt_file, 'w') as f:
        json.dump(gt, f)
    pq = pq_compute(gt_file, osp.join(out, 'pan.panoptic.json'),
                    osp.join(synthetic_root, 'annotations', 'panoptic_val'),
                    osp.join(out, 'pan.panoptic'))
    metrics = report['corrupted']['brightness']['1']['metrics']
    for key in ('PQ', 'SQ', 'RQ'):
        assert metrics[f'coco_panoptic/{key}'] == pytest.approx(100 * pq['All'][key.lower()])
    # every evaluation ran on the subset files
    for tag in ('clean', 'brightness/severity_1'):
        with open(osp.join(work, tag, osp.basename(TINY_M2F))) as f:
            text = f.read()
        assert text.count(osp.join(work, 'subset', 'panoptic_val.json')) >= 2, tag
        assert osp.join(work, 'subset', 'instances_val.json') in text, tag
