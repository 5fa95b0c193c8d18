import glob
import importlib.util
import json
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
