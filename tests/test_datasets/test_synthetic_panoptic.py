import hashlib
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest
from mmengine.config import Config
from panopticapi.utils import rgb2id
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mmmaps.datasets import synthetic_panoptic as syn
from tests.conftest import REPO_ROOT


def _tree_digest(root):
    digest = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = osp.join(dirpath, name)
            digest.update(osp.relpath(path, root).encode())
            with open(path, 'rb') as f:
                digest.update(f.read())
    return digest.hexdigest()


@pytest.mark.parametrize('split', ['train', 'val'])
def test_panoptic_format_is_valid(synthetic_root, split):
    root = synthetic_root
    with open(osp.join(root, 'annotations', f'panoptic_{split}.json')) as f:
        pan = json.load(f)
    cats = {c['id']: c for c in pan['categories']}
    assert [c['name'] for c in pan['categories']] == list(syn.CLASSES)
    assert len(pan['images']) == len(pan['annotations']) > 0
    images = {im['id']: im for im in pan['images']}
    coco = COCO(osp.join(root, 'annotations', f'instances_{split}.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(syn.THING_CLASSES)
    for ann in pan['annotations']:
        image = images[ann['image_id']]
        img = cv2.imread(osp.join(root, split, image['file_name']))
        assert img.shape == (image['height'], image['width'], 3)
        png = cv2.imread(osp.join(root, 'annotations', f'panoptic_{split}', ann['file_name']))
        ids = rgb2id(png[..., ::-1])
        segs = {s['id']: s for s in ann['segments_info']}
        assert set(np.unique(ids)) - {0} == set(segs)
        sem = cv2.imread(osp.join(root, 'annotations', f'semantic_{split}', ann['file_name']),
                         cv2.IMREAD_UNCHANGED)
        assert ((ids == 0) == (sem == syn.IGNORE_INDEX)).all()
        stuff_cats = set()
        thing_masks = {}
        for seg_id, seg in segs.items():
            mask = ids == seg_id
            assert seg['area'] == mask.sum()
            ys, xs = np.nonzero(mask)
            assert seg['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                   ys.max() - ys.min() + 1]
            assert (sem[mask] == seg['category_id'] - 1).all()
            if cats[seg['category_id']]['isthing']:
                thing_masks[seg_id] = (seg['category_id'], mask)
            else:
                assert seg['category_id'] not in stuff_cats, 'one segment per stuff class'
                stuff_cats.add(seg['category_id'])
        inst = coco.loadAnns(coco.getAnnIds(imgIds=[ann['image_id']]))
        assert len(inst) == len(thing_masks)
        unmatched = dict(thing_masks)
        for a in inst:
            m = mask_utils.decode(a['segmentation']).astype(bool)
            match = [k for k, (cat, mask) in unmatched.items()
                     if cat == a['category_id'] and (mask == m).all()]
            assert match, 'instance annotation without an identical panoptic segment'
            del unmatched[match[0]]


def test_deterministic_for_a_seed(tmp_path):
    kwargs = dict(num_train=4, num_val=2, size=(48, 64), progress=False)
    syn.generate_synthetic_panoptic(str(tmp_path / 'a'), seed=3, **kwargs)
    syn.generate_synthetic_panoptic(str(tmp_path / 'b'), seed=3, **kwargs)
    syn.generate_synthetic_panoptic(str(tmp_path / 'c'), seed=4, **kwargs)
    assert _tree_digest(tmp_path / 'a') == _tree_digest(tmp_path / 'b')
    assert _tree_digest(tmp_path / 'a') != _tree_digest(tmp_path / 'c')
    img = cv2.imread(str(tmp_path / 'a' / 'train' / '000000000001.jpg'))
    assert img.shape == (48, 64, 3)


def test_images_do_not_depend_on_split_size(tmp_path):
    syn.generate_synthetic_panoptic(str(tmp_path / 'small'), 2, 1, seed=0, size=(40, 40),
                                    progress=False)
    syn.generate_synthetic_panoptic(str(tmp_path / 'big'), 5, 1, seed=0, size=(40, 40),
                                    progress=False)
    for name in ('000000000001.png', '000000000002.png'):
        a = cv2.imread(str(tmp_path / 'small/annotations/panoptic_train' / name))
        b = cv2.imread(str(tmp_path / 'big/annotations/panoptic_train' / name))
        assert (a == b).all()


def test_reuse_force_and_no_partial_output(tmp_path, monkeypatch):
    out = str(tmp_path / 'd')
    meta = syn.generate_synthetic_panoptic(out, 2, 1, seed=0, size=(32, 32), progress=False)
    assert not meta['reused']
    assert syn.generate_synthetic_panoptic(out, 2, 1, seed=0, size=(32, 32),
                                           progress=False)['reused']
    assert not syn.generate_synthetic_panoptic(out, 2, 1, seed=0, size=(32, 32), force=True,
                                               progress=False)['reused']

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(syn, '_write_split', boom)
    with pytest.raises(KeyboardInterrupt):
        syn.generate_synthetic_panoptic(str(tmp_path / 'e'), 2, 1, progress=False)
    assert sorted(os.listdir(tmp_path)) == ['d'], 'an interrupted run must leave nothing'


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match='num_train'):
        syn.generate_synthetic_panoptic(str(tmp_path / 'x'), 0, 1)
    with pytest.raises(ValueError, match='size'):
        syn.generate_synthetic_panoptic(str(tmp_path / 'x'), 1, 1, size=(8, 8))


def test_scene_context_disambiguates_lookalike_things(synthetic_root):
    # The look-alike pairs share shape and palette; the scenes they occur in are disjoint.
    scenes_of = {}
    for scene in syn.SCENE_TYPES:
        for thing in scene.things:
            scenes_of.setdefault(thing, set()).add(scene.name)
    for a, b in (('car', 'boat'), ('ball', 'buoy'), ('dog', 'seal')):
        assert syn._SHAPE_OF[a] == syn._SHAPE_OF[b]
        assert not scenes_of[a] & scenes_of[b]
    # and every scene type has its own stuff layout
    layouts = {tuple(s for s, _ in scene.bands) for scene in syn.SCENE_TYPES}
    assert len(layouts) == len(syn.SCENE_TYPES)


def test_config_metainfo_matches_generator():
    cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs/_base_/datasets/synthetic_panoptic.py'))
    assert tuple(cfg.metainfo['classes']) == syn.CLASSES
    assert tuple(cfg.metainfo['thing_classes']) == syn.THING_CLASSES
    assert tuple(cfg.metainfo['stuff_classes']) == syn.STUFF_CLASSES
    assert [tuple(c) for c in cfg.metainfo['palette']] == [tuple(c) for c in syn.PALETTE]


def _annotations_digest(root):
    """sha256 of the panoptic annotations (JSON records and decoded id maps): what a variant
    may change, independent of the PNG and JPEG encoders."""
    digest = hashlib.sha256()
    for split in syn.SPLITS:
        with open(osp.join(root, 'annotations', f'panoptic_{split}.json')) as f:
            ann = json.load(f)
        digest.update(json.dumps([ann['images'], ann['annotations']], sort_keys=True).encode())
        for a in ann['annotations']:
            png = osp.join(root, 'annotations', f'panoptic_{split}', a['file_name'])
            digest.update(np.ascontiguousarray(cv2.imread(png)[..., ::-1]).tobytes())
    return digest.hexdigest()


def test_bundled_set_is_unchanged_by_the_variants(tmp_path):
    """The digest was taken before data variants existed (2026-12-03): the bundled set, which
    every config, benchmark and published number uses, draws exactly what it drew."""
    out = str(tmp_path / 'bundled')
    meta = syn.generate_synthetic_panoptic(out, 12, 4, seed=3, size=(64, 64), progress=False)
    assert 'variant' not in meta['params']  # earlier datasets' records still match
    assert _annotations_digest(out) == \
        '8dca25f3625fc22f1b70552f1ab490ec01c36ccf98c3bbe42b2a64e1d098091d'


def _things_by_neighbourhood(root):
    """(scene, thing class, the stuff class most of the pixels around the thing are) of every
    thing segment of the train split, read from the annotation PNGs."""
    with open(osp.join(root, 'annotations', 'panoptic_train.json')) as f:
        ann = json.load(f)
    names = {c['id']: c['name'] for c in ann['categories']}
    scenes = {im['id']: im['scene'] for im in ann['images']}
    rows = []
    for a in ann['annotations']:
        ids = rgb2id(cv2.imread(osp.join(root, 'annotations', 'panoptic_train',
                                         a['file_name']))[..., ::-1])
        stuff = {s['id']: names[s['category_id']] for s in a['segments_info']
                 if names[s['category_id']] in syn.STUFF_CLASSES}
        for s in a['segments_info']:
            if names[s['category_id']] not in syn.THING_CLASSES:
                continue
            mask = (ids == s['id']).astype(np.uint8)
            ring = cv2.dilate(mask, np.ones((5, 5), np.uint8)).astype(bool) & ~mask.astype(bool)
            around = [stuff[i] for i in ids[ring] if i in stuff]
            if around:
                rows.append((scenes[a['image_id']], names[s['category_id']],
                             max(set(around), key=around.count)))
    return rows, ann


def test_shared_support_variant_hides_the_twin_from_the_neighbourhood(tmp_path):
    """On the bundled set the stuff around a ball/buoy or dog/seal names its class; in the
    'shared_support' variant both twins of a pair stand on grass, and only the scene (a lake
    has water somewhere, a meadow none) tells them apart."""
    rows, anns = {}, {}
    for variant in ('bundled', 'shared_support'):
        out = str(tmp_path / variant)
        meta = syn.generate_synthetic_panoptic(out, 120, 1, seed=0, size=(96, 96),
                                               progress=False, variant=variant)
        rows[variant], anns[variant] = _things_by_neighbourhood(out)
        assert meta['params'].get('variant', 'bundled') == variant
    ann = anns['shared_support']
    on_grass = {v: {(scene, name) for scene, name, around in r if around == 'grass'}
                for v, r in rows.items()}

    def grass_share(variant, name):
        arounds = [around for _, n, around in rows[variant] if n == name]
        return arounds.count('grass') / len(arounds)

    for a, b in (('ball', 'buoy'), ('dog', 'seal')):
        assert {name for _, name in on_grass['shared_support']} >= {a, b}
        # bundled: a buoy or seal next to grass is one at the water's edge (measured 3 of 62
        # buoys, 1 of 39 seals); the variant stands a lake's on grass (31 of 62, 13 of 39)
        assert grass_share('bundled', b) < 0.1 and grass_share('shared_support', b) > 0.25
    # on grass, a buoy or seal is at a lake and a ball at a meadow, nowhere else
    assert {scene for scene, name in on_grass['shared_support'] if name in ('buoy', 'seal')} \
        == {'lake'}
    assert {scene for scene, name in on_grass['shared_support'] if name == 'ball'} == {'meadow'}
    # the scene is in the image: every lake image has water, no meadow image has any
    names = {c['id']: c['name'] for c in ann['categories']}
    scenes = {im['id']: im['scene'] for im in ann['images']}
    for a in ann['annotations']:
        has_water = any(names[s['category_id']] == 'water' for s in a['segments_info'])
        if scenes[a['image_id']] in ('lake', 'meadow'):
            assert has_water == (scenes[a['image_id']] == 'lake'), a['file_name']
    with pytest.raises(ValueError, match="unknown synthetic variant 'nope'"):
        syn.generate_synthetic_panoptic(str(tmp_path / 'x'), 1, 1, variant='nope')


def _beside_bundled(tmp_path, variant):
    """The bundled set and ``variant`` drawn with the same seed: their roots and train
    annotations, by variant."""
    roots, anns = {}, {}
    for name in ('bundled', variant):
        roots[name] = str(tmp_path / name)
        syn.generate_synthetic_panoptic(roots[name], 48, 1, seed=0, size=(96, 96),
                                        progress=False, variant=name)
        with open(osp.join(roots[name], 'annotations', 'panoptic_train.json')) as f:
            anns[name] = json.load(f)
    return roots, anns


def _assert_as_bundled(roots, variant, image, annotation):
    """The image file and annotation PNG of ``variant`` are the bundled set's, byte for
    byte."""
    for folder, record in (('train', image), ('annotations/panoptic_train', annotation)):
        name = record['file_name']
        with open(osp.join(roots['bundled'], folder, name), 'rb') as f, \
                open(osp.join(roots[variant], folder, name), 'rb') as g:
            assert f.read() == g.read(), name


def _sky_gradients(root, image):
    """Mean |d/dx| and |d/dy| of the grey image over sky pixels whose both neighbours are
    sky (finite differences, no stripe model)."""
    grey = cv2.imread(osp.join(root, 'train', image['file_name']),
                      cv2.IMREAD_GRAYSCALE).astype(np.float64)
    sky = cv2.imread(osp.join(root, 'annotations', 'semantic_train',
                              image['file_name'].replace('.jpg', '.png')),
                     cv2.IMREAD_UNCHANGED) == syn.CLASSES.index('sky')
    dx = np.abs(np.diff(grey, axis=1))[sky[:, 1:] & sky[:, :-1]]
    dy = np.abs(np.diff(grey, axis=0))[sky[1:] & sky[:-1]]
    return dx.mean(), dy.mean()


def test_sky_texture_variant_tells_meadow_from_lake_by_the_sky_stripes_only(tmp_path):
    """'sky_texture': coast and street are the bundled images pixel for pixel; meadow and
    lake have the same stuff and the twins' classes swapped; the lake's sky changes along x
    (vertical stripes), the meadow's along y (horizontal ones), which the bundled sky does
    not."""
    roots, anns = _beside_bundled(tmp_path, 'sky_texture')
    names = {c['id']: c['name'] for c in anns['sky_texture']['categories']}
    ratio = {}  # scene -> [mean |d/dx| / mean |d/dy| of each image's sky]
    for variant in roots:
        for image, a in zip(anns[variant]['images'], anns[variant]['annotations']):
            scene = image['scene']
            classes = {names[s['category_id']] for s in a['segments_info']}
            if variant == 'sky_texture' and scene in ('coast', 'street'):
                _assert_as_bundled(roots, 'sky_texture', image, a)
            if scene in ('meadow', 'lake'):
                if variant == 'sky_texture':
                    assert classes & set(syn.STUFF_CLASSES) == {'sky', 'grass'}, \
                        image['file_name']
                    other = {'meadow': {'buoy', 'seal'}, 'lake': {'ball', 'dog'}}[scene]
                    assert not classes & (other | {'boat', 'car'}), image['file_name']
                dx, dy = _sky_gradients(roots[variant], image)
                ratio.setdefault((variant, scene), []).append(dx / dy)
    assert [im['scene'] for im in anns['bundled']['images']] == \
        [im['scene'] for im in anns['sky_texture']['images']]
    assert min(len(ratio[('sky_texture', 'lake')]), len(ratio[('sky_texture', 'meadow')])) >= 5
    # measured: lake 1.41-1.86, meadow 0.53-0.73, the bundled skies 0.96-1.05
    assert min(ratio[('sky_texture', 'lake')]) > 1.25
    assert max(ratio[('sky_texture', 'meadow')]) < 0.8
    assert all(0.9 < r < 1.1 for r in ratio[('bundled', 'meadow')] + ratio[('bundled', 'lake')])


def _read_landmark(root, image, cell):
    """The 3x3 dark/light pattern painted in an image's sky, read from its pixels (None when
    no square of that size is found, e.g. a thing stands in front of it)."""
    rgb = cv2.imread(osp.join(root, 'train', image['file_name']))[..., ::-1].astype(int)
    sky = cv2.imread(osp.join(root, 'annotations', 'semantic_train',
                              image['file_name'].replace('.jpg', '.png')),
                     cv2.IMREAD_UNCHANGED) == syn.CLASSES.index('sky')
    extreme = ((rgb.max(axis=2) < 80) | (rgb.min(axis=2) > 200)) & sky
    count, labels, stats, _ = cv2.connectedComponentsWithStats(extreme.astype(np.uint8), 8)
    if count < 2:
        return None
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = stats[biggest, :4]
    side = syn.LANDMARK_GRID * cell
    if (w, h) != (side, side):
        return None
    centres = y + cell // 2 + cell * np.arange(syn.LANDMARK_GRID)
    cols = x + cell // 2 + cell * np.arange(syn.LANDMARK_GRID)
    return rgb[centres][:, cols].mean(axis=2) < 128


def test_landmarks_variant_tells_meadow_from_lake_by_an_arbitrary_glyph(tmp_path):
    """'landmarks': coast and street are the bundled images pixel for pixel; meadow and lake
    have the same stuff and the twins' classes swapped, and carry in their sky a glyph that
    only its set (lake: 0, meadow: 1) ties to the scene, never a glyph of the other set or its
    mirror image."""
    roots, anns = _beside_bundled(tmp_path, 'landmarks')
    names = {c['id']: c['name'] for c in anns['landmarks']['categories']}
    glyphs = syn.landmark_glyphs()
    sets = [{g.tobytes() for g in glyph_set} for glyph_set in glyphs]
    mirrors = [{g[:, ::-1].tobytes() for g in glyph_set} for glyph_set in glyphs]
    assert len(sets[0] | sets[1]) == 2 * syn.LANDMARK_SET_SIZE
    assert not (sets[0] | mirrors[0]) & (sets[1] | mirrors[1])
    read = {'meadow': [], 'lake': []}
    for image, a in zip(anns['landmarks']['images'], anns['landmarks']['annotations']):
        scene = image['scene']
        if scene in ('coast', 'street'):
            _assert_as_bundled(roots, 'landmarks', image, a)
            continue
        classes = {names[s['category_id']] for s in a['segments_info']}
        assert classes & set(syn.STUFF_CLASSES) == {'sky', 'grass'}, image['file_name']
        other = {'meadow': {'buoy', 'seal'}, 'lake': {'ball', 'dog'}}[scene]
        assert not classes & (other | {'boat', 'car'}), image['file_name']
        read[scene].append(_read_landmark(roots['landmarks'], image, cell=round(6 * 96 / 128)))
    for scene, glyph_set in (('lake', 0), ('meadow', 1)):
        found = [g.tobytes() for g in read[scene] if g is not None]
        assert len(found) >= 0.8 * len(read[scene]) >= 4, (scene, len(found), len(read[scene]))
        assert all(g in sets[glyph_set] for g in found), scene
    # the bundled set has no such square in its skies
    bundled = [_read_landmark(roots['bundled'], image, cell=round(6 * 96 / 128))
               for image in anns['bundled']['images'] if image['scene'] in ('meadow', 'lake')]
    assert bundled and all(g is None for g in bundled)
