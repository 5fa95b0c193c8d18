"""benchmarks/runs.py, what the training benchmarks' numbers rest on: the paired 95 %
interval (hand-computed with a t-table value), the seeded labelled subsets and the
validation curve read back from a training's scalars."""
import json
import os.path as osp

import pytest

from ..conftest import load_tool


@pytest.fixture(scope='module')
def runs():
    return load_tool('benchmarks/runs.py')


def test_interval95_is_the_t_interval_of_the_paired_differences(runs):
    # diffs 1, 2, 3, 4: mean 2.5, sample sd sqrt(5/3) = 1.2910; t(0.975, 3 df) = 3.1824
    # (t-table): half-width 3.1824 * 1.2910 / 2 = 2.0543
    mean, half = runs.interval95([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert half == pytest.approx(2.0543, abs=1e-4)
    # 8 seeds, 7 df: t = 2.3646
    diffs = [0.6, 4.4, 0.6, 3.2, -2.6, 2.5, 1.0, -0.5]
    mean, half = runs.interval95(diffs)
    sd = (sum((d - sum(diffs) / 8) ** 2 for d in diffs) / 7) ** 0.5
    assert mean == pytest.approx(1.15)
    assert half == pytest.approx(2.3646 * sd / 8 ** 0.5, rel=1e-4)
    mean, half = runs.interval95([3.0])
    assert mean == 3.0 and half != half  # one seed: no interval (nan)


def _panoptic(n):
    images = [dict(id=i * 1000 + 7, file_name=f'{i}.jpg', scene='lake') for i in range(n)]
    annotations = [dict(image_id=im['id'], file_name=f'{i}.png', segments_info=[])
                   for i, im in enumerate(images)]
    return dict(images=images, annotations=annotations, categories=[dict(id=1, name='sky')])


def test_write_subset_draws_a_seeded_subset_with_its_annotations(runs, tmp_path):
    src = tmp_path / 'all.json'
    src.write_text(json.dumps(_panoptic(40)))
    a = runs.write_subset(str(src), str(tmp_path / 'a.json'), 10, seed=0)
    again = runs.write_subset(str(src), str(tmp_path / 'again.json'), 10, seed=0)
    other = runs.write_subset(str(src), str(tmp_path / 'other.json'), 10, seed=1)
    first = runs.write_subset(str(src), str(tmp_path / 'first.json'), 10)
    assert a == again and a != other and len(set(a)) == 10
    assert first == [i * 1000 + 7 for i in range(10)]
    with open(tmp_path / 'a.json') as f:
        data = json.load(f)
    assert sorted(im['id'] for im in data['images']) == a
    assert sorted(x['image_id'] for x in data['annotations']) == a
    assert data['categories'] == [dict(id=1, name='sky')]
    assert not list(tmp_path.glob('*.tmp'))
    with pytest.raises(ValueError, match='has 40 images, asked for 41'):
        runs.write_subset(str(src), str(tmp_path / 'b.json'), 41, seed=0)


def test_validation_curve_reads_each_validation_at_its_iteration(runs, tmp_path):
    folder = tmp_path / 'train' / '20261203_000000' / 'vis_data'
    folder.mkdir(parents=True)
    records = [dict(loss=3.0, step=100),
               {'coco_panoptic/PQ': 58.0, 'coco_panoptic/PQ_th': 25.0, 'step': 500},
               {'coco_panoptic/PQ': 64.8, 'coco_panoptic/PQ_th': 37.0, 'step': 1000}]
    (folder / 'scalars.json').write_text('\n'.join(map(json.dumps, records)))
    curve = runs.validation_curve(osp.join(tmp_path, 'train'))
    assert sorted(curve) == [500, 1000]
    assert curve[500]['PQ'] == 58.0 and curve[1000]['PQ_th'] == 37.0
    with open(folder / 'scalars.json', 'a') as f:  # a second validation logged at step 1000
        f.write('\n' + json.dumps({'coco_panoptic/PQ': 1.0, 'step': 1000}))
    with pytest.raises(ValueError, match='two validations logged at step 1000'):
        runs.validation_curve(osp.join(tmp_path, 'train'))


def test_run_ledger_reuses_a_result_only_for_the_same_run(runs, tmp_path):
    """The committed ledger an experiment accumulates across sessions: a record answers only
    a run described exactly as it was; a redone run replaces its record."""
    path = str(tmp_path / 'results' / 'x_runs.json')
    ledger = runs.RunLedger(path)
    what = dict(config='a.py', options=('lr=1', 'seed=3'), inputs=dict(annotation='ab12'))
    assert ledger.lookup('n50/maps/seed3', what) is None  # no file yet
    ledger.record('n50/maps/seed3', what, dict(PQ=61.5), seconds=900)
    ledger.record('n50/maps/seed0', dict(what, options=['seed=0']), dict(PQ=60.0))
    again = runs.RunLedger(path)  # another session reads the committed file
    assert again.lookup('n50/maps/seed3', json.loads(json.dumps(what))) == dict(PQ=61.5)
    assert again.lookup('n50/maps/seed3', dict(what, inputs=dict(annotation='ab13'))) is None
    assert again.lookup('n50/maps/seed3', dict(what, options=('lr=1',))) is None
    assert again.lookup('n50/maps/seed4', what) is None
    again.record('n50/maps/seed3', dict(what, inputs=dict(annotation='ab13')), dict(PQ=59.0))
    assert again.lookup('n50/maps/seed3', what) is None
    with open(path) as f:
        data = json.load(f)
    assert data['format'] == 'mmmaps-run-ledger/1'
    assert list(data['runs']) == ['n50/maps/seed0', 'n50/maps/seed3']
    assert data['runs']['n50/maps/seed3']['result'] == dict(PQ=59.0)
    assert not list((tmp_path / 'results').glob('*.tmp'))
    (tmp_path / 'other.json').write_text(json.dumps(dict(runs={})))
    with pytest.raises(ValueError, match=r'other\.json: not a run ledger'):
        runs.RunLedger(str(tmp_path / 'other.json')).lookup('k', what)


def test_directory_digest_follows_content_not_build_time(runs, tmp_path):
    """Two builds of the same memory on two machines differ only in their manifests' times
    and their logs; the digest is equal for them and changes with any byte or name."""
    def build(folder, created, payload=b'\x00\x01keys'):
        (folder / 'scene' / '__pycache__').mkdir(parents=True)
        (folder / 'scene' / 'keys.npy').write_bytes(payload)
        (folder / 'scene' / 'manifest.json').write_text(json.dumps(dict(created=created)))
        (folder / 'manifest.json').write_text(json.dumps(dict(created=created)))
        (folder / 'build.log').write_text(f'built at {created}')
        (folder / 'scene' / '__pycache__' / 'x.pyc').write_bytes(created.encode())
        return runs.directory_digest(str(folder))

    a = build(tmp_path / 'a', '2026-12-01T10:00:00')
    assert build(tmp_path / 'b', '2026-12-04T18:30:00') == a
    assert build(tmp_path / 'c', '2026-12-01T10:00:00', b'\x00\x02keys') != a
    (tmp_path / 'b' / 'scene' / 'keys.npy').rename(tmp_path / 'b' / 'scene' / 'values.npy')
    assert runs.directory_digest(str(tmp_path / 'b')) != a
    assert runs.directory_digest(str(tmp_path / 'a'), '.py') != a  # no .py file: empty digest
    with pytest.raises(FileNotFoundError, match='is not a directory'):
        runs.directory_digest(str(tmp_path / 'missing'))


def test_portable_writes_checkout_paths_relative_to_it(runs):
    inside = osp.join(runs.ROOT, 'work_dirs', 'm', 'ann.json')
    assert runs.portable(['x=' + inside, ('/elsewhere/a.json',), dict(k=inside), 3]) == \
        ['x=work_dirs/m/ann.json', ['/elsewhere/a.json'], dict(k='work_dirs/m/ann.json'), 3]
