"""ADE20K and Cityscapes -> COCO panoptic converters on tiny fabricated native-format samples.

Each dataset is fabricated by hand (semantic / instance maps with known segments), converted
in-process (``main(argv)``) and once in a fresh interpreter as a user would, and checked:
the panoptic PNG/JSON (and instances JSON) round-trip to the fabricated segments; mmdet's
``CocoPanopticDataset`` with the base config's metainfo loads the output with the right
thing/stuff split; and the config's three evaluators score predictions made from the ground
truth as perfect (which also checks that the config's paths are the converter's).
"""
import copy
import importlib.util
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData, PixelData
from panopticapi.utils import rgb2id
from pycocotools import mask as mask_utils

from mmdet.evaluation.functional import INSTANCE_OFFSET
from mmdet.registry import DATASETS, METRICS
from mmdet.utils import register_all_modules
from mmmaps.datasets import panoptic_conversion as pc
from tests.conftest import REPO_ROOT, run_tool

DATASET_CFGS = osp.join(REPO_ROOT, 'configs', '_base_', 'datasets')
ADE_TOOL = osp.join('tools', 'dataset_converters', 'ade20k2coco_panoptic.py')
CS_TOOL = osp.join('tools', 'dataset_converters', 'cityscapes2coco_panoptic.py')


def _tool(path):
    spec = importlib.util.spec_from_file_location(osp.basename(path)[:-3],
                                                  osp.join(REPO_ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rect(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _tree(root):
    """{relative path: bytes or link target} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = osp.join(dirpath, name)
            rel = osp.relpath(path, root)
            if osp.islink(path):
                out[rel] = 'link:' + os.readlink(path)
            else:
                with open(path, 'rb') as f:
                    out[rel] = f.read()
    return out


# ---------------------------------------------------------------------------
# ADE20K: images/, annotations/ (SceneParse150 semantic maps), annotations_instance/
# (R = instance-track class 1..100, G = instance id)
# ---------------------------------------------------------------------------
# SceneParse150 ids and instance-track classes (categoryMapping.txt) of the classes used
ADE_SEM = {'wall': 1, 'sky': 3, 'floor': 4, 'grass': 10, 'bed': 8, 'person': 13, 'car': 21}
ADE_INST = {'bed': 1, 'person': 4, 'car': 9}
ADE_THINGS = set(ADE_INST)


def _ade_samples():
    """(folder, name, (H, W), semantic paint ops, instance paint ops, expected segments).

    Ops are painted in order; expected segments are (class, mask), written out by hand."""
    samples = []
    # train 1: two people and a bed on wall/sky; the bed's instance mask extends two rows over
    # what the semantic map calls wall (instances win); a car in the semantic map without an
    # instance and an "other" (0) corner are void.
    s = (32, 48)
    person_a, person_b = rect(s, 12, 28, 4, 12), rect(s, 14, 30, 30, 38)
    bed = rect(s, 20, 32, 16, 28)
    car_blob, other = rect(s, 2, 6, 40, 46), rect(s, 0, 2, 0, 4)
    sky, wall = rect(s, 0, 10, 0, 48), rect(s, 10, 32, 0, 48)
    samples.append(('training', 'ADE_train_00000001', s,
                    [('sky', sky), ('wall', wall), ('person', person_a), ('person', person_b),
                     ('bed', rect(s, 22, 32, 16, 28)), ('car', car_blob), (0, other)],
                    [('person', 1, person_a), ('person', 2, person_b), ('bed', 3, bed)],
                    [('sky', sky & ~car_blob & ~other),
                     ('wall', wall & ~person_a & ~person_b & ~bed),
                     ('person', person_a), ('person', person_b), ('bed', bed)]))
    # train 2: a car whose instance covers two rows of "other"; instance ids need not start at 1
    floor, wall = rect(s, 0, 16, 0, 48), rect(s, 16, 32, 0, 48)
    car = rect(s, 8, 20, 10, 30)
    samples.append(('training', 'ADE_train_00000002', s,
                    [('floor', floor), ('wall', wall), ('car', rect(s, 10, 20, 10, 30)),
                     (0, rect(s, 8, 10, 10, 30))],
                    [('car', 5, car)],
                    [('floor', floor & ~car), ('wall', wall & ~car), ('car', car)]))
    # val: another size; two touching people stay two segments
    s = (40, 32)
    sky, grass = rect(s, 0, 16, 0, 32), rect(s, 16, 40, 0, 32)
    p1, p2, car = rect(s, 10, 30, 4, 10), rect(s, 10, 30, 10, 16), rect(s, 24, 36, 20, 30)
    samples.append(('validation', 'ADE_val_00000001', s,
                    [('sky', sky), ('grass', grass), ('person', p1 | p2), ('car', car)],
                    [('person', 7, p1), ('person', 8, p2), ('car', 9, car)],
                    [('sky', sky & ~p1 & ~p2), ('grass', grass & ~p1 & ~p2 & ~car),
                     ('person', p1), ('person', p2), ('car', car)]))
    return samples


def make_ade20k(root):
    rng = np.random.default_rng(0)
    for folder, name, shape, sem_ops, inst_ops, _ in _ade_samples():
        for sub in ('images', 'annotations', 'annotations_instance'):
            os.makedirs(osp.join(root, sub, folder), exist_ok=True)
        cv2.imwrite(osp.join(root, 'images', folder, name + '.jpg'),
                    rng.integers(0, 255, shape + (3,), dtype=np.uint8))
        sem = np.zeros(shape, np.uint8)
        for cls, mask in sem_ops:
            sem[mask] = ADE_SEM[cls] if cls else 0
        inst = np.zeros(shape + (3,), np.uint8)  # RGB
        for cls, inst_id, mask in inst_ops:
            inst[mask] = (ADE_INST[cls], inst_id, 0)
        cv2.imwrite(osp.join(root, 'annotations', folder, name + '.png'), sem)
        cv2.imwrite(osp.join(root, 'annotations_instance', folder, name + '.png'),
                    inst[..., ::-1])
    return root


def ade_expected(split):
    folder = dict(train='training', val='validation')[split]
    return [(name + '.jpg', shape, [(cls, cls in ADE_THINGS, False, m) for cls, m in segs])
            for f, name, shape, _, _, segs in _ade_samples() if f == folder]


# ---------------------------------------------------------------------------
# Cityscapes: gtFine/<split>/<city>/*_gtFine_instanceIds.png (label id, or label*1000+k)
# ---------------------------------------------------------------------------
# label id -> class of the 19 evaluated ones (cityscapesscripts' labels.py); others are void
CS_NAMES = {7: 'road', 8: 'sidewalk', 11: 'building', 21: 'vegetation', 22: 'terrain',
            23: 'sky', 24: 'person', 25: 'rider', 26: 'car', 27: 'truck', 33: 'bicycle'}
CS_THING_LABELS = {24, 25, 26, 27, 28, 31, 32, 33}


def _cs_samples():
    """(split, city, name, instanceIds map); the map is painted in order, later wins."""
    s = (32, 48)
    out = []

    def paint(ops):
        ids = np.zeros(s, np.uint16)
        for value, mask in ops:
            ids[mask] = value
        return ids

    out.append(('train', 'aachen', 'aachen_000000_000019', paint([
        (23, rect(s, 0, 8, 0, 48)), (11, rect(s, 8, 16, 0, 48)), (7, rect(s, 16, 32, 0, 48)),
        (26001, rect(s, 18, 26, 4, 16)), (26002, rect(s, 18, 26, 20, 30)),
        (24001, rect(s, 10, 28, 36, 40)), (26, rect(s, 26, 30, 0, 10)),  # a crowd of cars
        (1, rect(s, 30, 32, 20, 48)),  # ego vehicle: void
        (29001, rect(s, 2, 6, 2, 8)),  # caravan (an instance, not evaluated): void
        (6, rect(s, 2, 6, 40, 46))])))  # ground: void
    out.append(('train', 'bochum', 'bochum_000000_000313', paint([
        (7, rect(s, 0, 32, 0, 48)), (8, rect(s, 24, 32, 0, 48)),
        (25001, rect(s, 4, 20, 8, 14)), (33001, rect(s, 14, 24, 6, 16)),
        (33002, rect(s, 14, 24, 30, 40))])))
    out.append(('val', 'frankfurt', 'frankfurt_000000_000294', paint([
        (0, rect(s, 0, 4, 0, 48)), (23, rect(s, 4, 12, 0, 48)), (21, rect(s, 12, 20, 0, 48)),
        (22, rect(s, 20, 32, 0, 48)), (27001, rect(s, 14, 28, 4, 24)),
        (24, rect(s, 18, 30, 30, 44))])))  # a crowd of people
    return out


def make_cityscapes(root):
    rng = np.random.default_rng(1)
    for split, city, name, ids in _cs_samples():
        img_dir = osp.join(root, 'leftImg8bit', split, city)
        gt_dir = osp.join(root, 'gtFine', split, city)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(gt_dir, exist_ok=True)
        cv2.imwrite(osp.join(img_dir, f'{name}_leftImg8bit.png'),
                    rng.integers(0, 255, ids.shape + (3,), dtype=np.uint8))
        assert cv2.imwrite(osp.join(gt_dir, f'{name}_gtFine_instanceIds.png'), ids)
        # the other gtFine files of the release are ignored
        cv2.imwrite(osp.join(gt_dir, f'{name}_gtFine_labelIds.png'),
                    np.where(ids >= 1000, ids // 1000, ids).astype(np.uint8))
        with open(osp.join(gt_dir, f'{name}_gtFine_polygons.json'), 'w') as f:
            json.dump({'objects': []}, f)
    return root


def cs_expected(split):
    out = []
    for s, city, name, ids in _cs_samples():
        if s != split:
            continue
        segs = []
        for value in np.unique(ids):
            label = value // 1000 if value >= 1000 else value
            if label in CS_NAMES:
                segs.append((CS_NAMES[label], label in CS_THING_LABELS,
                             label in CS_THING_LABELS and value < 1000, ids == value))
        out.append((f'{city}/{name}_leftImg8bit.png', ids.shape, segs))
    return out


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------
def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1)]


def _key(seg):
    name, _, crowd, mask = seg
    return name, crowd, mask.tobytes()


def check_round_trip(pan_json, png_dir, ins_json, expected, metainfo, native_ids):
    """The JSONs and PNGs hold exactly the expected segments, with the right categories."""
    with open(pan_json) as f:
        pan = json.load(f)
    cats = {c['id']: c for c in pan['categories']}
    num_things = len(metainfo['thing_classes'])
    assert [c['name'] for c in pan['categories']] == list(metainfo['classes'])
    assert [c['isthing'] for c in pan['categories']] == [1] * num_things + [0] * (
        len(metainfo['classes']) - num_things)
    for name, cat_id in native_ids.items():  # categories keep the dataset's class ids
        assert [c['id'] for c in pan['categories'] if c['name'] == name] == [cat_id]
    assert [im['id'] for im in pan['images']] == list(range(1, len(expected) + 1))
    assert [im['file_name'] for im in pan['images']] == [e[0] for e in expected]
    assert [(im['height'], im['width']) for im in pan['images']] == [e[1] for e in expected]
    with open(ins_json) as f:
        ins = json.load(f)
    assert ins['images'] == pan['images']
    assert [c['name'] for c in ins['categories']] == list(metainfo['thing_classes'])
    assert len({a['id'] for a in ins['annotations']}) == len(ins['annotations'])

    for ann, (file_name, shape, segs) in zip(pan['annotations'], expected):
        image_id = ann['image_id']
        assert ann['file_name'] == file_name.replace('.jpg', '.png')
        png = cv2.imread(osp.join(png_dir, ann['file_name']))
        assert png is not None and png.shape == shape + (3,)
        ids = rgb2id(png[..., ::-1])
        # mmdet's CocoPanopticMetric looks the PNG up by the image's base name
        flat = cv2.imread(osp.join(png_dir, osp.basename(ann['file_name'])))
        assert (flat == png).all()
        info = ann['segments_info']
        assert sorted(np.unique(ids[ids > 0]).tolist()) == sorted(s['id'] for s in info)
        got = []
        for s in info:
            mask = ids == s['id']
            assert s['area'] == mask.sum() and s['bbox'] == _bbox(mask)
            cat = cats[s['category_id']]
            got.append((cat['name'], bool(cat['isthing']), bool(s['iscrowd']), mask))
        assert sorted(map(_key, got)) == sorted(map(_key, segs))
        union = np.logical_or.reduce([m for *_, m in segs])
        assert ((ids == 0) == ~union).all(), 'everything else is void'
        # instances: exactly the thing segments
        things = sorted(_key(s) for s in segs if s[1])
        inst = [a for a in ins['annotations'] if a['image_id'] == image_id]
        got = []
        for a in inst:
            mask = mask_utils.decode(a['segmentation']).astype(bool)
            assert a['area'] == mask.sum() and a['bbox'] == _bbox(mask)
            got.append((cats[a['category_id']]['name'], bool(a['iscrowd']), mask.tobytes()))
        assert sorted(got) == things


def _dataset_cfg(cfg, loader, root, pipeline=None):
    ds = copy.deepcopy(cfg[loader].dataset)
    ds['data_root'] = root.rstrip('/') + '/'
    if pipeline is not None:
        ds['pipeline'] = pipeline
    return ds


def _evaluator_cfgs(cfg, root):
    out = []
    for e in cfg.val_evaluator:
        e = copy.deepcopy(e)
        for key in ('ann_file', 'seg_prefix'):
            if key in e:
                assert e[key].startswith(cfg.data_root)
                e[key] = root.rstrip('/') + '/' + e[key][len(cfg.data_root):]
                assert osp.exists(e[key]), f'{key} {e[key]} not written by the converter'
        out.append(e)
    return out


def check_dataset(cfg_path, root, split, expected):
    """CocoPanopticDataset (the base config's metainfo) loads the converter's output: things
    are gt instances, everything (things, stuff, crowds) is in the semantic map."""
    import mmmaps  # noqa: F401  (PanopticSemSegMetric)
    register_all_modules()
    cfg = Config.fromfile(cfg_path)
    loader = 'train_dataloader' if split == 'train' else 'val_dataloader'
    load = [dict(type='LoadImageFromFile'),
            dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True)]
    dataset = DATASETS.build(_dataset_cfg(cfg, loader, root, load))
    meta = dataset.metainfo
    classes, num_things = list(meta['classes']), len(meta['thing_classes'])
    assert tuple(meta['classes']) == tuple(cfg.metainfo['classes'])
    if split == 'train':  # filter_empty_gt keeps the images with things (all of ours)
        assert len(dataset) == len(expected)
    for i, (file_name, shape, segs) in enumerate(expected):
        results = dataset[i]
        assert results['img_path'].endswith(file_name)
        assert results['img'].shape[:2] == shape
        things = [(classes.index(n), m) for n, is_thing, crowd, m in segs
                  if is_thing and not crowd]
        got = list(zip(results['gt_bboxes_labels'].tolist(),
                       results['gt_masks'].masks.astype(bool)))
        key = lambda item: (item[0], item[1].tobytes())  # noqa: E731
        assert sorted(map(key, got)) == sorted(map(key, things))
        assert all(label < num_things for label, _ in got)
        for box, (_, mask) in zip(results['gt_bboxes'].numpy(), got):
            x, y, w, h = _bbox(mask)
            assert box.tolist() == [x, y, x + w, y + h]
        sem = np.full(shape, 255)
        for name, is_thing, _, mask in segs:
            sem[mask] = classes.index(name)
            assert (classes.index(name) < num_things) == is_thing
        assert (results['gt_seg_map'] == sem).all()


def check_config_pipelines_and_evaluators(cfg_path, root):
    """The config's own train/test pipelines run on the output, and its three evaluators
    score ground-truth predictions as perfect."""
    import mmmaps  # noqa: F401
    register_all_modules()
    cfg = Config.fromfile(cfg_path)
    num_things = len(cfg.metainfo['thing_classes'])
    train = DATASETS.build(_dataset_cfg(cfg, 'train_dataloader', root))
    sample = train[0]
    assert sample['inputs'].shape[0] == 3
    assert len(sample['data_samples'].gt_instances) > 0
    assert (sample['data_samples'].gt_instances.labels < num_things).all()

    test = DATASETS.build(_dataset_cfg(cfg, 'test_dataloader', root))
    metrics = [METRICS.build(e) for e in _evaluator_cfgs(cfg, root)]
    num_classes = len(cfg.metainfo['classes'])
    for m in metrics:
        m.dataset_meta = test.metainfo
    raw = [test.get_data_info(i) for i in range(len(test))]
    for i in range(len(test)):
        data_sample = test[i]['data_samples']
        pan_png = cv2.imread(raw[i]['seg_map_path'])
        ids = rgb2id(pan_png[..., ::-1])
        pred = np.full(ids.shape, num_classes, np.int64)  # void
        labels, masks = [], []
        for k, seg in enumerate(raw[i]['segments_info']):
            mask = ids == seg['id']
            pred[mask] = seg['category'] + (k + 1) * INSTANCE_OFFSET
            if seg['category'] < num_things:
                labels.append(seg['category'])
                masks.append(mask)
        data_sample.pred_panoptic_seg = PixelData(sem_seg=torch.from_numpy(pred)[None])
        boxes = [[x, y, x + w, y + h] for x, y, w, h in map(_bbox, masks)]
        data_sample.pred_instances = InstanceData(
            labels=torch.tensor(labels), scores=torch.ones(len(labels)),
            bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            masks=torch.from_numpy(np.array(masks, bool).reshape(-1, *ids.shape)))
        for m in metrics:
            m.process({}, [data_sample.to_dict()])
    results = {}
    for m in metrics:
        results.update(m.evaluate(len(test)))
    assert results['coco_panoptic/PQ'] == pytest.approx(100)
    assert results['coco/segm_mAP'] == pytest.approx(1.0)
    assert results['semseg/mIoU'] == pytest.approx(100)


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------
ADE_CFG = osp.join(DATASET_CFGS, 'ade20k_panoptic.py')
CS_CFG = osp.join(DATASET_CFGS, 'cityscapes_panoptic.py')


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    root = make_ade20k(str(tmp_path_factory.mktemp('ade') / 'ADEChallengeData2016'))
    _tool(ADE_TOOL).main([root, '--no-progress'])
    return root


@pytest.fixture(scope='module')
def cs_root(tmp_path_factory):
    root = make_cityscapes(str(tmp_path_factory.mktemp('cityscapes') / 'cityscapes'))
    _tool(CS_TOOL).main([root, '--no-progress'])
    return root


@pytest.mark.parametrize('split', ['train', 'val'])
def test_ade20k_round_trip(ade_root, split):
    names = pc.ade20k_output_names(split)
    check_round_trip(osp.join(ade_root, names['panoptic_json']),
                     osp.join(ade_root, names['png_dir']),
                     osp.join(ade_root, names['instances_json']), ade_expected(split),
                     pc.ADE20K_METAINFO, dict(ADE_SEM))
    assert not [n for n in os.listdir(ade_root) if n.startswith('.')], 'no staging left'


@pytest.mark.parametrize('split', ['train', 'val'])
def test_cityscapes_round_trip(cs_root, split):
    ann = osp.join(cs_root, 'annotations')
    names = pc.cityscapes_output_names(split)
    check_round_trip(osp.join(ann, names['panoptic_json']), osp.join(ann, names['png_dir']),
                     osp.join(ann, names['instances_json']), cs_expected(split),
                     pc.CITYSCAPES_METAINFO, {v: k for k, v in CS_NAMES.items()})


@pytest.mark.parametrize('split', ['train', 'val'])
def test_ade20k_dataset_loads_with_thing_stuff_split(ade_root, split):
    check_dataset(ADE_CFG, ade_root, split, ade_expected(split))


@pytest.mark.parametrize('split', ['train', 'val'])
def test_cityscapes_dataset_loads_with_thing_stuff_split(cs_root, split):
    check_dataset(CS_CFG, cs_root, split, cs_expected(split))


@pytest.mark.parametrize('which', ['ade20k', 'cityscapes'])
def test_config_pipelines_and_evaluators_on_converted_data(which, request):
    root = request.getfixturevalue('ade_root' if which == 'ade20k' else 'cs_root')
    check_config_pipelines_and_evaluators(ADE_CFG if which == 'ade20k' else CS_CFG, root)


@pytest.mark.parametrize('which', ['ade20k', 'cityscapes'])
def test_cli_in_fresh_interpreter_matches_in_process(which, request, tmp_path):
    """As a user runs it (progress bar, two worker processes): the same files."""
    root = request.getfixturevalue('ade_root' if which == 'ade20k' else 'cs_root')
    tool = ADE_TOOL if which == 'ade20k' else CS_TOOL
    out = str(tmp_path / 'out')
    proc = run_tool([tool, root, '--out', out, '--nproc', '2'], env_root='unused/')
    assert f'{which} val' in proc.stderr and '100%' in proc.stderr, 'progress bar'
    assert 'val: 1 images' in proc.stdout
    if which == 'ade20k':
        assert 'agrees with the instance class (R channel) on 100.0% of 3 instances' in proc.stdout
        reference = {k: v for k, v in _tree(root).items() if k.startswith('ade20k_')}
    else:
        reference = _tree(osp.join(root, 'annotations'))
    assert _tree(out) == reference


def test_ade20k_existing_output_needs_force(ade_root, tmp_path):
    tool = _tool(ADE_TOOL)
    out = str(tmp_path / 'out')
    tool.main([ade_root, '--out', out, '--splits', 'val', '--no-progress'])
    with pytest.raises(SystemExit, match='already exist.*--force'):
        tool.main([ade_root, '--out', out, '--splits', 'val', '--no-progress'])
    with open(osp.join(out, 'ade20k_panoptic_val.json'), 'w') as f:
        f.write('stale')
    tool.main([ade_root, '--out', out, '--splits', 'val', '--no-progress', '--force',
               '--no-instances'])
    with open(osp.join(out, 'ade20k_panoptic_val.json')) as f:
        assert len(json.load(f)['images']) == 1
    assert sorted(os.listdir(out)) == ['ade20k_instance_val.json', 'ade20k_panoptic_val',
                                       'ade20k_panoptic_val.json']


def test_ade20k_bad_inputs_name_the_file(tmp_path):
    tool = _tool(ADE_TOOL)
    missing = str(tmp_path / 'nowhere')
    with pytest.raises(SystemExit, match=f'ADE20K root {missing} does not exist'):
        tool.main([missing, '--no-progress'])

    root = make_ade20k(str(tmp_path / 'ade'))
    # an instance whose pixels carry two classes in the R channel: nothing is published
    inst_path = osp.join(root, 'annotations_instance', 'training', 'ADE_train_00000002.png')
    inst = cv2.imread(inst_path)
    inst[8, 10, 2] = 4  # R channel (BGR on disk) of one pixel of car instance 5 -> person
    cv2.imwrite(inst_path, inst)
    with pytest.raises(SystemExit, match=rf'{inst_path}: instance 5 .* \[4, 9\]'):
        tool.main([root, '--no-progress'])
    assert sorted(os.listdir(root)) == ['annotations', 'annotations_instance', 'images']

    sem_path = osp.join(root, 'annotations', 'validation', 'ADE_val_00000001.png')
    cv2.imwrite(sem_path, np.zeros((8, 8), np.uint8))
    with pytest.raises(SystemExit, match=rf'{sem_path} is 8x8 but its image .* is 40x32'):
        tool.main([root, '--splits', 'val', '--no-progress'])

    os.remove(osp.join(root, 'annotations', 'training', 'ADE_train_00000001.png'))
    with pytest.raises(SystemExit, match='annotation .*ADE_train_00000001.png of image'):
        tool.main([root, '--no-progress'])
    missing = osp.join(root, 'annotations_instance', 'validation')
    os.rename(missing, missing + '.bak')
    with pytest.raises(SystemExit, match=f'instance annotation folder {missing} does not exist'):
        tool.main([root, '--splits', 'val', '--no-progress'])
    assert not [n for n in os.listdir(root) if n.startswith('.') or n.startswith('ade20k')]


def test_cityscapes_bad_inputs_name_the_file(tmp_path):
    tool = _tool(CS_TOOL)
    root = make_cityscapes(str(tmp_path / 'cityscapes'))
    image = osp.join(root, 'leftImg8bit', 'val', 'frankfurt',
                     'frankfurt_000000_000294_leftImg8bit.png')
    os.remove(image)
    with pytest.raises(SystemExit, match=f'image {image} of annotation .* does not exist'):
        tool.main([root, '--no-progress'])
    missing = osp.join(root, 'gtFine', 'val')
    os.rename(missing, missing + '.bak')
    with pytest.raises(SystemExit, match=f'annotation folder {missing} does not exist'):
        tool.main([root, '--no-progress'])
    assert not osp.exists(osp.join(root, 'annotations'))


def test_base_configs_define_the_same_panoptic_pipeline():
    from mmdet.datasets import ADE20KPanopticDataset, CocoPanopticDataset
    expected = {'coco_panoptic': (CocoPanopticDataset.METAINFO, 80, 53),
                'ade20k_panoptic': (pc.ADE20K_METAINFO, 100, 50),
                'cityscapes_panoptic': (pc.CITYSCAPES_METAINFO, 8, 11)}
    for name, (meta, num_things, num_stuff) in expected.items():
        cfg = Config.fromfile(osp.join(DATASET_CFGS, name + '.py'))
        assert [e['type'] for e in cfg.val_evaluator] == [
            'FastCocoPanopticMetric', 'CocoMetric', 'PanopticSemSegMetric']
        assert cfg.test_evaluator == cfg.val_evaluator
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            ds = cfg[loader].dataset
            assert ds.type == 'CocoPanopticDataset'
            types = [t['type'] for t in ds.pipeline]
            assert 'LoadPanopticAnnotations' in types and types[-1] == 'PackDetInputs'
            config_meta = ds.get('metainfo') or meta  # COCO: mmdet's own
            assert tuple(config_meta['classes']) == tuple(meta['classes'])
            assert len(config_meta['thing_classes']) == num_things
            assert len(config_meta['stuff_classes']) == num_stuff
            assert tuple(config_meta['classes']) == tuple(config_meta['thing_classes']) + tuple(
                config_meta['stuff_classes']), 'things first'
            assert [tuple(c) for c in config_meta['palette']] == [tuple(c) for c in meta['palette']]
    # the names mmdet's ADE20K dataset uses, so its configs and ours read the same JSON
    assert pc.ADE20K_METAINFO['classes'] == ADE20KPanopticDataset.METAINFO['classes']
    assert pc.ADE20K_METAINFO['thing_classes'] == ADE20KPanopticDataset.METAINFO['thing_classes']


@pytest.mark.parametrize('which', ['ade20k', 'cityscapes'])
@pytest.mark.parametrize('split', ['train', 'val'])
def test_check_dataset_finds_no_problem_in_converted_output(which, split, request, tmp_path):
    cfg, root = (ADE_CFG, 'ade_root') if which == 'ade20k' else (CS_CFG, 'cs_root')
    root = request.getfixturevalue(root).rstrip('/') + '/'
    report = str(tmp_path / 'report.json')
    rc = _tool(osp.join('tools', 'analysis', 'check_dataset.py')).main(
        [cfg, '--split', split, '--report', report,
         '--cfg-options', f'{split}_dataloader.dataset.data_root={root}'])
    problems = json.load(open(report))['problems'] if osp.exists(report) else []
    assert rc == 0 and problems == [], problems
