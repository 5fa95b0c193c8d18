"""demo/image_demo.py and tools/analysis/show_retrievals.py on the synthetic dataset.

Nothing is trained: the models are their initialisations (tools/misc/init_checkpoint.py),
the memory is the session's tiny random-weight memory (``synthetic_memory``).
"""
import hashlib
import os
import os.path as osp
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import (REPO_ROOT, TINY_M2F, init_checkpoints, load_config_with_root,
                            load_tool, run_tool)

TINY_MAPS = osp.join(REPO_ROOT, 'configs', 'maps', 'maps_r18_synthetic-panoptic.py')
TINY_PSF = osp.join(REPO_ROOT, 'configs', 'panoptic_segformer',
                    'panoptic-segformer_r18_synthetic.py')
CONFIGS = dict(mask2former=TINY_M2F, maps=TINY_MAPS, panoptic_segformer=TINY_PSF)
SIZE = 64  # the synthetic_root fixture's images are 64x64
TILE = 96


def read_png(path):
    assert osp.isfile(path), f'{path} was not written'
    image = cv2.imread(path)
    assert image is not None, f'{path} is not a readable image'
    leftovers = [f for f in os.listdir(osp.dirname(path)) if f.startswith('.')]
    assert not leftovers, f'temporary files left behind: {leftovers}'
    return image


def assert_not_blank(image, min_std=10.0):
    assert float(image.std()) > min_std, f'image looks blank (pixel std {image.std():.1f})'


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """Untrained weights of the three tiny configs (tools/misc/init_checkpoint.py)."""
    return init_checkpoints(CONFIGS, tmp_path_factory.mktemp('init_checkpoints'))


def memory_arrays(memory_root):
    """The scene bank and the query cache of a memory, read straight from their files."""
    scene, cache = osp.join(memory_root, 'scene'), osp.join(memory_root, 'query_cache')
    return dict(keys=np.load(osp.join(scene, 'keys.npy')).astype(np.float32),
                image_ids=np.load(osp.join(scene, 'image_ids.npy')),
                identities=[i.decode() for i in np.load(osp.join(scene, 'image_sha256.npy'))],
                cache_keys=np.load(osp.join(cache, 'embeddings.npy')),
                cache_identities=[i.decode() for i in
                                  np.load(osp.join(cache, 'image_sha256.npy'))])


def sha256_of(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def flat_search(keys, query, k):
    """Exact inner-product search (faiss IndexFlatIP): (rows, scores) of the top k."""
    import faiss
    index = faiss.IndexFlatIP(keys.shape[1])
    index.add(np.ascontiguousarray(keys, dtype=np.float32))
    scores, rows = index.search(np.ascontiguousarray(query, dtype=np.float32)[None], k)
    return rows[0].tolist(), scores[0].tolist()


def run_demo(args, root, expect_ok=True):
    if expect_ok:
        return run_tool(['demo/image_demo.py'] + args, root)
    env = dict(os.environ, MMMAPS_SYNTHETIC_ROOT=root,
               PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT,
                                                        os.environ.get('PYTHONPATH')])))
    return subprocess.run([sys.executable, 'demo/image_demo.py'] + args, cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


# ---------------------------------------------------------------------------- demo
@pytest.mark.parametrize('name', ['mask2former', 'panoptic_segformer'])
def test_demo_draws_the_overlay(name, checkpoints, val_image, synthetic_root, tmp_path):
    out = str(tmp_path / 'vis' / f'{name}.png')
    proc = run_demo([val_image, CONFIGS[name], checkpoints[name], '--out-file', out,
                     '--device', 'cpu', '--score-thr', '0.05'], synthetic_root)
    image = read_png(out)
    assert image.shape == (SIZE, SIZE, 3)  # the overlay keeps the input's size
    assert_not_blank(image)
    assert 'panoptic segments' in proc.stdout and f'wrote {out} ({SIZE}x{SIZE})' in proc.stdout


def test_demo_maps_attaches_the_memory_and_shows_retrievals(checkpoints, val_image,
                                                            synthetic_root, synthetic_memory,
                                                            tmp_path):
    common = [val_image, TINY_MAPS, checkpoints['maps'], '--device', 'cpu', '--cfg-options',
              f'memory.root={synthetic_memory}']
    plain = str(tmp_path / 'maps.png')
    proc = run_demo(common[:3] + ['--out-file', plain] + common[3:], synthetic_root)
    assert 'panoptic segments' in proc.stdout and 'retrieved' not in proc.stdout
    image = read_png(plain)
    assert image.shape == (SIZE, SIZE, 3)
    assert_not_blank(image)

    panel_path = str(tmp_path / 'maps_retrievals.png')
    proc = run_demo(common[:3] + ['--out-file', panel_path, '--show-retrievals'] + common[3:],
                    synthetic_root)
    assert f'retrieved 5 scenes from {synthetic_memory}' in proc.stdout
    assert 'retrieves itself' not in proc.stdout  # a val picture is not in the memory
    ranks = re.findall(r'#(\d+)\s+id (\d+)\s+similarity (-?[\d.]+)\s+(\S+)', proc.stdout)
    assert [int(r[0]) for r in ranks] == [1, 2, 3, 4, 5]  # k = memory.retrieval.k = 5
    scores = [float(r[2]) for r in ranks]
    assert scores == sorted(scores, reverse=True)
    for _, image_id, _, path in ranks:  # bank file names under the config's train images
        assert osp.isfile(path) and path.endswith(f'{int(image_id):012d}.jpg')
    panel = read_png(panel_path)
    # overlay + 5 retrieved scenes, each scaled to at least 160 px high, with captions
    assert panel.shape[0] > 160 and panel.shape[1] >= 6 * 160
    assert_not_blank(panel)
    # every retrieved tile shows a (non-constant) image
    tiles = np.array_split(panel[:160], 6, axis=1)
    assert all(t.std() > 5 for t in tiles)

    # what the demo printed is the retrieval its prediction carries (metainfo['retrieval'],
    # values stripped), and that is the exact nearest-neighbour search of the bank with the
    # key encoder's embedding of the image the model sees
    from mmcv.transforms import Compose

    from mmmaps.apis import inference_panoptic, init_panoptic_model, pipeline_without_annotations
    from mmmaps.memory import ExternalMemory, build_memory_encoder
    cfg = load_config_with_root(TINY_MAPS, synthetic_root, {'memory.root': synthetic_memory})
    model = init_panoptic_model(cfg, checkpoints['maps'], device='cpu')
    assert isinstance(model.memory, ExternalMemory)
    assert model.memory.root.root == osp.abspath(synthetic_memory)
    sample = inference_panoptic(model, val_image)
    retrieval = sample.metainfo['retrieval']
    assert retrieval.scene_values.shape == (1, 5, 0) and retrieval.object_values.shape[-1] == 0
    assert not retrieval.keys_from_cache.any()  # val pictures are in no query cache
    seen = Compose(pipeline_without_annotations(cfg))(dict(img_path=val_image, img_id=0))
    assert tuple(seen['inputs'].shape[-2:]) != (SIZE, SIZE)  # the test pipeline resized it
    key = build_memory_encoder(cfg.memory.key_encoder)([seen['inputs'][[2, 1, 0]]])
    torch.testing.assert_close(retrieval.query_keys, key, atol=1e-5, rtol=1e-4)
    bank = memory_arrays(synthetic_memory)
    rows, exact_scores = flat_search(bank['keys'], key[0].numpy(), 5)
    exact_ids = bank['image_ids'][rows].tolist()
    assert retrieval.image_ids[0].tolist() == exact_ids
    assert [int(r[1]) for r in ranks] == exact_ids
    assert scores == pytest.approx(exact_scores, abs=2e-4)


def test_demo_show_retrievals_needs_maps(checkpoints, val_image, synthetic_root, tmp_path):
    out = str(tmp_path / 'nope.png')
    proc = run_demo([val_image, TINY_M2F, checkpoints['mask2former'], '--out-file', out,
                     '--device', 'cpu', '--show-retrievals'], synthetic_root, expect_ok=False)
    assert proc.returncode != 0
    assert '--show-retrievals needs a MAPS config' in proc.stderr
    assert 'builds a Mask2Former' in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not osp.exists(out)


def test_demo_names_missing_files(checkpoints, val_image, tmp_path):
    demo = load_tool('demo/image_demo.py')
    missing = str(tmp_path / 'no_such_image.jpg')
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        demo.main([missing, TINY_M2F, checkpoints['mask2former'], '--out-file',
                   str(tmp_path / 'x.png')])
    missing = str(tmp_path / 'no_such.pth')
    with pytest.raises(FileNotFoundError, match='checkpoint .*' + re.escape(missing)):
        demo.main([val_image, TINY_M2F, missing, '--out-file', str(tmp_path / 'x.png')])


def test_draw_panoptic_with_class_names_and_all_void():
    from mmdet.evaluation.functional import INSTANCE_OFFSET
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData, PixelData

    from mmmaps.apis import draw_panoptic, panoptic_segments

    classes = ('person', 'car', 'sky')
    meta = dict(classes=classes, palette=[(220, 20, 60), (0, 0, 142), (70, 130, 180)])
    rng = np.random.default_rng(0)
    image = rng.integers(90, 110, (48, 64, 3), dtype=np.uint8)
    pan = torch.full((1, 48, 64), len(classes), dtype=torch.int64)  # void
    pan[:, :20] = 2  # sky (stuff)
    pan[:, 25:40, 5:20] = 1 + 1 * INSTANCE_OFFSET  # car #1
    pan[:, 25:45, 30:40] = 0 + 2 * INSTANCE_OFFSET  # person #2
    sample = DetDataSample(metainfo=dict(img_shape=(48, 64), ori_shape=(48, 64)))
    sample.pred_panoptic_seg = PixelData(sem_seg=pan)
    sample.pred_instances = InstanceData(
        bboxes=torch.tensor([[5., 25., 20., 40.], [30., 25., 40., 45.]]),
        labels=torch.tensor([1, 0]), scores=torch.tensor([0.9, 0.1]),
        masks=torch.zeros(2, 48, 64, dtype=torch.bool))
    assert [s[0] for s in panoptic_segments(sample, classes)] == ['sky', 'car', 'person']
    drawn = draw_panoptic(image, sample, meta, score_thr=0.5)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert np.abs(drawn.astype(int) - image).mean() > 5  # masks and labels were drawn
    assert 'pred_instances' in sample and 'masks' in sample.pred_instances  # input untouched

    sample.pred_panoptic_seg = PixelData(sem_seg=torch.full_like(pan, len(classes)))
    del sample.pred_instances
    assert panoptic_segments(sample, classes) == []
    np.testing.assert_array_equal(draw_panoptic(image, sample, meta), image)


# ---------------------------------------------------------------------------- viewer
@pytest.fixture(scope='module')
def viewer():
    return load_tool('tools/analysis/show_retrievals.py')


def show(viewer, root, monkeypatch, args):
    monkeypatch.setenv('MMMAPS_SYNTHETIC_ROOT', root)
    return viewer.main([TINY_MAPS, '--tile', str(TILE), '--device', 'cpu'] + args)


def query_lines(text):
    """{query id: [retrieved ids]} from the viewer's printed summary."""
    return {int(q): [int(i) for i in re.findall(r'(\d+) \(', rest)]
            for q, rest in re.findall(r'query (\d+): (.*)', text)}


def test_show_retrievals_scene_grid(viewer, synthetic_root, synthetic_memory, monkeypatch,
                                    tmp_path, capsys):
    grids = {}
    for k in (2, 3):
        out = str(tmp_path / f'scenes_k{k}.png')
        show(viewer, synthetic_root, monkeypatch,
             ['--bank', synthetic_memory, '--num', '3', '--k', str(k), '--out', out])
        grids[k] = read_png(out)
        assert_not_blank(grids[k])
        found = query_lines(capsys.readouterr().out)
        assert len(found) == 3 and all(len(ids) == k for ids in found.values())
    cell_w = grids[2].shape[1] / 3  # query + k tiles per row, all the same width
    assert cell_w == grids[3].shape[1] / 4 and cell_w >= TILE
    for grid in grids.values():  # one row per query
        assert grid.shape[0] % 3 == 0 and grid.shape[0] // 3 > TILE
    assert grids[2].shape[0] == grids[3].shape[0]


def test_show_retrievals_train_split_uses_cache_and_leak_guard(
        viewer, synthetic_root, synthetic_memory, monkeypatch, tmp_path, capsys):
    out = str(tmp_path / 'train.png')
    show(viewer, synthetic_root, monkeypatch,
         ['--bank', synthetic_memory, '--split', 'train', '--num', '4', '--k', '3',
          '--out', out])
    text = capsys.readouterr().out
    assert 'queries: train split' in text
    assert f'query caches by content ({synthetic_memory}/query_cache)' in text
    assert 'training policy: a query never retrieves its own picture' in text
    found = query_lines(text)
    assert len(found) == 4
    bank = memory_arrays(synthetic_memory)
    for query, ids in found.items():
        assert len(ids) == 3 and query not in ids  # never retrieves itself
        # the cached key of the picture (found by content), exact search without the picture
        own = sha256_of(osp.join(synthetic_root, 'train', f'{query:012d}.jpg'))
        key = bank['cache_keys'][bank['cache_identities'].index(own)]
        rows, _ = flat_search(bank['keys'], key, len(bank['keys']))
        assert ids == [int(bank['image_ids'][r]) for r in rows
                       if bank['identities'][r] != own][:3]
    assert read_png(out).shape[0] % 4 == 0

    # --no-cache: the key encoder on the query files gives the same keys, so the same ids
    show(viewer, synthetic_root, monkeypatch,
         ['--bank', synthetic_memory, '--split', 'train', '--num', '4', '--k', '3', '--no-cache',
          '--out', str(tmp_path / 'train_no_cache.png')])
    text = capsys.readouterr().out
    assert 'query caches by content (none)' in text
    assert query_lines(text) == found


def test_show_retrievals_other_splits_use_the_evaluation_policy(
        viewer, synthetic_root, synthetic_memory, monkeypatch, tmp_path, capsys):
    """Queries of a non-train split retrieve as at test time: nothing is excluded, so the
    pictures of the memory (here the val split pointed at the train images) find
    themselves first."""
    show(viewer, synthetic_root, monkeypatch,
         ['--bank', synthetic_memory, '--num', '4', '--k', '3', '--out',
          str(tmp_path / 'eval.png'), '--cfg-options',
          'val_dataloader.dataset.ann_file=annotations/panoptic_train.json',
          'val_dataloader.dataset.data_prefix.img=train/',
          'val_dataloader.dataset.data_prefix.seg=annotations/panoptic_train/'])
    text = capsys.readouterr().out
    assert 'queries: val split' in text and 'evaluation policy: nothing excluded' in text
    found = query_lines(text)
    assert len(found) == 4
    for query, ids in found.items():
        assert len(ids) == 3 and ids[0] == query
    sims = re.findall(r'query (\d+): \d+ \((-?[\d.]+)\)', text)
    assert [float(s) for _, s in sims] == pytest.approx([1.0] * 4, abs=1e-3)


def test_show_retrievals_objects(viewer, synthetic_root, synthetic_memory, monkeypatch,
                                 tmp_path, capsys):
    scenes = str(tmp_path / 'scenes.png')
    show(viewer, synthetic_root, monkeypatch,
         ['--bank', synthetic_memory, '--num', '2', '--k', '3', '--out', scenes])
    row_h = read_png(scenes).shape[0] // 2
    capsys.readouterr()

    out = str(tmp_path / 'objects.png')
    show(viewer, synthetic_root, monkeypatch,
         ['--bank', synthetic_memory, '--num', '2', '--k', '3', '--objects',
          '--num-segments', '2', '--top', '4', '--out', out])
    grid = read_png(out)
    assert_not_blank(grid)
    assert grid.shape[0] == 4 * row_h  # 2 queries x 2 segments
    assert grid.shape[1] == 5 * (read_png(scenes).shape[1] // 4)  # segment + 4 objects
    text = capsys.readouterr().out
    rows = re.findall(r'query (\d+) segment (\d+) \((\w+)\): (\d+) retrieved objects; top: (.*)',
                      text)
    assert len(rows) == 4
    classes = ('person', 'car', 'boat', 'ball', 'buoy', 'dog', 'seal', 'sky', 'water', 'sand',
               'grass', 'road', 'wall')
    for _, _, name, count, top in rows:
        assert name in classes and int(count) >= 4
        shown = re.findall(r'(\w+)@(\d+) (-?[\d.]+)', top)
        assert len(shown) == 4 and all(c in classes for c, _, _ in shown)
        sims = [float(s) for _, _, s in shown]
        assert sims == sorted(sims, reverse=True)

    # explicit segments of one image
    image_id, segment_id = rows[0][0], rows[0][1]
    out = str(tmp_path / 'one.png')
    show(viewer, synthetic_root, monkeypatch,
         ['--bank', synthetic_memory, '--k', '3', '--objects', '--segments',
          f'{image_id}:{segment_id}', '--top', '2', '--out', out])
    assert read_png(out).shape[0] == row_h


def test_show_retrievals_errors(viewer, synthetic_root, synthetic_memory, monkeypatch,
                                tmp_path):
    from mmmaps.memory import MemoryBankError
    missing = str(tmp_path / 'no_memory')
    with pytest.raises(MemoryBankError, match=re.escape(missing)):
        show(viewer, synthetic_root, monkeypatch,
             ['--bank', missing, '--out', str(tmp_path / 'x.png')])
    with pytest.raises(viewer.ViewerError, match=r'image ids \[123456\] are not in the val'):
        show(viewer, synthetic_root, monkeypatch,
             ['--bank', synthetic_memory, '--ids', '123456', '--out', str(tmp_path / 'x.png')])
    assert not osp.exists(tmp_path / 'x.png')


def test_bank_images_follow_appended_sources(tmp_path):
    """Entries appended from another annotation file (build_memory.py --append) are read
    from the img_prefix recorded with their source; the original ones through the config."""
    from types import SimpleNamespace

    from mmengine.config import Config

    from mmmaps.apis import BankImages
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type='CocoPanopticDataset', data_root=str(tmp_path / 'root'),
        ann_file='annotations/panoptic_train.json',
        data_prefix=dict(img='train/', seg='annotations/panoptic_train/')))))
    extra = str(tmp_path / 'extra_images')
    bank = SimpleNamespace(image_ids=np.array([1, 2, 3, 10, 11]), num_entries=5,
                           file_names=['a.jpg', 'b.jpg', 'c.jpg', 'x.jpg', 'sub/y.jpg'],
                           path='bank')
    source = dict(split='train', ann_file='/nowhere/panoptic_train.json', ann_sha256='t')
    manifest = dict(source=source, sources=[source, dict(
        split='train', ann_file='/data/extra.json', ann_sha256='e', img_prefix=extra,
        seg_prefix=extra + '_png')], lineage=[dict(parent=dict(num_images=3))])
    memory = SimpleNamespace(root='mem', scene_bank=bank, object_bank=None, source=source,
                             manifest=manifest)
    images = BankImages(cfg, memory)
    assert images.path(2) == osp.join(str(tmp_path / 'root'), 'train/', 'b.jpg')
    assert images.path(11) == osp.join(extra, 'sub/y.jpg')
    assert images.source_of(10)['ann_files'] == ['/data/extra.json']
    with pytest.raises(FileNotFoundError, match=re.escape(osp.join(extra, 'x.jpg'))):
        images.read(10)
    with pytest.raises(KeyError, match='image id 99 is not in the memory bank'):
        images.path(99)
