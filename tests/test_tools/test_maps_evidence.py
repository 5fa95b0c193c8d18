"""benchmarks/maps_evidence.py: the oracle memory (the headroom arm) and the look-alike flip
rate, against references computed here (FAISS flat search on the source keys, the
annotation's scene types, hand-counted pixels)."""
import json
import os
import os.path as osp

import faiss
import numpy as np
import pytest
from PIL import Image

from ..conftest import load_tool, tree_sha256


@pytest.fixture(scope='module')
def evidence():
    return load_tool('benchmarks/maps_evidence.py')


def _bank_arrays(folder):
    return {name: np.load(osp.join(folder, f'{name}.npy'))
            for name in ('keys', 'image_ids', 'image_sha256', 'offsets')}


def _values(folder):
    with open(osp.join(folder, 'manifest.json')) as f:
        manifest = json.load(f)
    return np.fromfile(osp.join(folder, 'values.bin'), dtype=manifest['value_dtype']).reshape(
        manifest['num_values'], manifest['value_dim']).astype(np.float64)


def test_oracle_memory_holds_one_vector_per_true_scene_type(evidence, synthetic_root,
                                                           synthetic_memory, tmp_path):
    from mmmaps.memory.memory_root import MemoryRoot

    ann = osp.join(synthetic_root, 'annotations', 'panoptic_train.json')
    with open(ann) as f:
        scene_of = {im['id']: im['scene'] for im in json.load(f)['images']}
    assert len(set(scene_of.values())) >= 2, 'the session dataset needs two scene types'
    dst = str(tmp_path / 'oracle')
    assert evidence.oracle_memory(synthetic_memory, ann, dst) == dst

    root = MemoryRoot(dst, verify=True)  # checksums, shapes, index: a valid memory
    src_scene, oracle_scene = (osp.join(r, 'scene') for r in (synthetic_memory, dst))
    src, oracle = _bank_arrays(src_scene), _bank_arrays(oracle_scene)
    for name in src:
        np.testing.assert_array_equal(oracle[name], src[name], err_msg=name)

    # retrieval unchanged: the oracle's index returns what an exact search of the source
    # keys returns
    flat = faiss.IndexFlatIP(src['keys'].shape[1])
    flat.add(src['keys'].astype(np.float32))
    queries = np.random.default_rng(0).standard_normal((6, src['keys'].shape[1]))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    _, expected = flat.search(queries, 3)
    _, found = root.scene_bank.search(queries, 3)
    np.testing.assert_array_equal(np.asarray(found), expected)

    # values: equal exactly when the scene types are, near-orthogonal otherwise, at the
    # source bank's mean norm
    values = _values(oracle_scene)
    scenes = [scene_of[int(i)] for i in src['image_ids']]
    unit = values / np.linalg.norm(values, axis=1, keepdims=True)
    for i in range(len(scenes)):
        for j in range(len(scenes)):
            if scenes[i] == scenes[j]:
                np.testing.assert_allclose(values[i], values[j], rtol=0, atol=1e-6)
            else:
                assert abs(unit[i] @ unit[j]) < 0.3, (scenes[i], scenes[j])
    mean_norm = np.linalg.norm(_values(src_scene), axis=1).mean()
    np.testing.assert_allclose(np.linalg.norm(values, axis=1), mean_norm, rtol=2e-3)

    # the rest of the memory is the source's, byte for byte; a second call writes nothing
    for part in ('object', 'query_cache'):
        assert tree_sha256(osp.join(dst, part)) == tree_sha256(
            osp.join(synthetic_memory, part)), part
    before = tree_sha256(dst)
    evidence.oracle_memory(synthetic_memory, ann, dst)
    assert tree_sha256(dst) == before


def test_oracle_memory_refuses_an_annotation_without_scene_types(evidence, synthetic_root,
                                                                synthetic_memory, tmp_path):
    with open(osp.join(synthetic_root, 'annotations', 'panoptic_train.json')) as f:
        data = json.load(f)
    del data['images'][1]['scene']
    ann = tmp_path / 'no_scene.json'
    ann.write_text(json.dumps(data))
    dst = tmp_path / 'oracle'
    with pytest.raises(ValueError, match=r'no_scene\.json gives no scene type for 1 images'):
        evidence.oracle_memory(synthetic_memory, str(ann), str(dst))
    assert not dst.exists() and not [p for p in os.listdir(tmp_path) if 'oracle' in p]


def _write_panoptic(folder, annotations, categories=None):
    """COCO panoptic JSON + PNGs of {image_id: (H, W) array of category names}."""
    names = ['car', 'boat', 'sky']
    os.makedirs(folder + '.panoptic' if categories is None else folder, exist_ok=True)
    png_dir = folder + '.panoptic' if categories is None else folder
    out = []
    for image_id, labels in annotations.items():
        ids = np.zeros(labels.shape, np.int64)
        segments = []
        for k, name in enumerate(names):
            if (labels == name).any():
                seg_id = 1000 + 7 * k  # ids that use more than the red channel
                ids[labels == name] = seg_id
                segments.append(dict(id=seg_id, category_id=k + 1))
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(osp.join(png_dir, f'{image_id}.png'))
        out.append(dict(image_id=image_id, file_name=f'{image_id}.png', segments_info=segments))
    data = dict(annotations=out)
    if categories is not None:
        data['categories'] = [dict(id=k + 1, name=n) for k, n in enumerate(names)]
    path = (folder + '.json') if categories is not None else (folder + '.panoptic.json')
    with open(path, 'w') as f:
        json.dump(data, f)
    return path


def test_look_alike_flip_rate_counts_twin_pixels(evidence, tmp_path):
    gt1 = np.array([['car'] * 4, ['car'] * 4, ['sky'] * 4, ['sky'] * 4], dtype=object)
    gt2 = np.array([['boat'] * 2 + ['sky'] * 2] * 2 + [['sky'] * 4] * 2, dtype=object)
    # image 1: of the 8 car pixels, 5 stay car, 2 become boat (the twin), 1 becomes sky;
    # image 2: the 4 boat pixels all become car; sky predicted as boat counts for nothing
    pred1 = gt1.copy()
    pred1[1, 1:3] = 'boat'
    pred1[1, 3] = 'sky'
    pred2 = gt2.copy()
    pred2[:2, :2] = 'car'
    pred2[3, 3] = 'boat'
    gt_ann = _write_panoptic(str(tmp_path / 'gt'), {1: gt1, 2: gt2}, categories=True)
    prefix = str(tmp_path / 'pred')
    _write_panoptic(prefix, {1: pred1, 2: pred2})
    flips = evidence.look_alike_flips(prefix, gt_ann, str(tmp_path / 'gt'))
    assert flips == pytest.approx((2 + 4) / (5 + 2 + 4))


def test_plateau_schedule_is_the_first_validation_near_the_best_before_the_lr_step(evidence):
    # 400 labels, lr step at 2550: PQ 58 -> 66 -> 69.5 -> 70 -> 70.2; the jump at 3000
    # comes from the step and is not a reason to train longer
    pq = {500: 58.0, 1000: 66.0, 1500: 69.5, 2000: 70.0, 2500: 70.2, 3000: 73.9}
    assert evidence.plateau_schedule(pq, 2550) == 1500
    assert evidence.plateau_schedule({**pq, 1500: 69.1}, 2550) == 2000
    with pytest.raises(ValueError, match='1 validations before the lr step'):
        evidence.plateau_schedule({500: 58.0, 3000: 70.0}, 2550)


def test_regime_is_the_smallest_size_clearly_below_the_full_set_without_collapse(evidence):
    # 400 labels: PQ_th 52; 10 labels collapsed (< 26), 20 labels 5.5 below: the regime
    assert evidence.regime_size({10: 20.0, 20: 46.5, 50: 49.0, 400: 52.0}) == 20
    # no size both 5 below and above half: none
    assert evidence.regime_size({10: 20.0, 20: 48.0, 50: 50.0, 400: 52.0}) is None
    with pytest.raises(ValueError, match='needs the 400-label model'):
        evidence.regime_size({10: 20.0, 20: 46.5})


def test_a_data_variant_gets_its_own_data_work_dir_and_results(evidence):
    """The bundled runs keep the paths their stamps and published results live under; a data
    variant never reads or overwrites them."""
    bundled = evidence.parse_args(['arms'])
    assert (bundled.data_root, bundled.work_dir, bundled.results_name) == \
        ('data/synthetic', 'work_dirs/maps_evidence', 'maps_evidence')
    variant = evidence.parse_args(['curve', '--data-variant', 'shared_support'])
    assert (variant.data_root, variant.work_dir, variant.results_name) == \
        ('data/synthetic_shared_support', 'work_dirs/maps_evidence_shared_support',
         'maps_evidence_shared_support')
    given = evidence.parse_args(['curve', '--data-variant', 'shared_support',
                                 '--work-dir', 'w', '--data-root', 'd'])
    assert (given.data_root, given.work_dir) == ('d', 'w')
    # another MAPS config never trains over the default config's stamped arms
    other = evidence.parse_args(['arms', '--data-variant', 'sky_texture',
                                 '--maps-config', 'configs/maps/other.py'])
    assert (other.data_root, other.work_dir, other.results_name) == \
        ('data/synthetic_sky_texture', 'work_dirs/maps_evidence_sky_texture_other',
         'maps_evidence_sky_texture_other')
    same = evidence.parse_args(['arms', '--maps-config', './' + evidence.MAPS])
    assert same.work_dir == 'work_dirs/maps_evidence'
    # but the labelled subsets and Mask2Former's runs are the variant's, whichever MAPS
    # config they are paired with
    assert other.variant_dir == 'work_dirs/maps_evidence_sky_texture'
    assert given.variant_dir == 'w'
    with pytest.raises(SystemExit):
        evidence.parse_args(['arms', '--seeds'])


def test_mask2former_trains_once_per_variant_whatever_the_maps_config(evidence, monkeypatch):
    trained = []
    monkeypatch.setattr(evidence, 'stamped_training',
                        lambda work, config, options: trained.append((work, config)))
    for maps_config in (evidence.MAPS, 'configs/maps/other.py'):
        args = evidence.parse_args(['arms', '--data-variant', 'sky_texture', '--iters', '7',
                                    '--size', '5', '--maps-config', maps_config])
        evidence.arm_run(args, 'mask2former', 3, 'ann.json', None)
        evidence.arm_run(args, 'maps', 3, 'ann.json', 'memory')
    assert trained == [
        ('work_dirs/maps_evidence_sky_texture/iters7/mask2former_n5_seed3', evidence.MASK2FORMER),
        ('work_dirs/maps_evidence_sky_texture/iters7/maps_n5_seed3', evidence.MAPS),
        ('work_dirs/maps_evidence_sky_texture/iters7/mask2former_n5_seed3', evidence.MASK2FORMER),
        ('work_dirs/maps_evidence_sky_texture_other/iters7/maps_n5_seed3',
         'configs/maps/other.py')]


def test_a_results_tag_publishes_beside_the_main_run_of_its_phase(evidence):
    """A run over fewer seeds (or other arms) never overwrites the main published run."""
    main = evidence.parse_args(['counterfactual', '--data-variant', 'shared_support'])
    assert evidence.published_name(main) == 'maps_evidence_shared_support_counterfactual'
    part = evidence.parse_args(['counterfactual', '--data-variant', 'shared_support',
                                '--results-tag', 'seeds0-3'])
    assert evidence.published_name(part) == \
        'maps_evidence_shared_support_counterfactual_seeds0-3'
    for bad in ('../x', 'a/b', 'a b', ''):
        with pytest.raises(SystemExit):
            evidence.parse_args(['counterfactual', '--results-tag', bad])


def _row(seed, test, pq, flips, class_pq, absent=()):
    return dict(arm='maps', seed=seed, test=test, PQ=pq, PQ_th=pq - 20,
                look_alike_flips=flips, class_PQ=class_pq, absent_classes=list(absent),
                PQ_absent=(sum(class_pq[c] for c in absent) / len(absent)) if absent
                else None)


def test_robustness_pairs_each_wrong_memory_with_memory_off_on_the_same_classes(evidence):
    """Hand-computed: the PQ of the classes absent from a memory is compared with memory
    off's PQ on exactly those classes; a seed whose memory lacks no class leaves that
    column; the single-scene memories are averaged per seed, then paired."""
    from scipy import stats
    rows = []
    # seed: (memory off's PQ and class PQ, lake-only row, street-only row)
    off_pq = {0: 70.0, 1: 72.0, 2: 68.0}
    off_classes = {0: dict(ball=60.0, buoy=40.0, car=80.0),
                   1: dict(ball=50.0, buoy=50.0, car=70.0),
                   2: dict(ball=70.0, buoy=30.0, car=90.0)}
    for s in (0, 1, 2):
        rows.append(_row(s, 'memory off', off_pq[s], 1.0, off_classes[s]))
    # lake only: ball absent in every seed
    rows.append(_row(0, 'memory of lake only', 60.0, 11.0, dict(ball=20.0, buoy=40.0, car=80.0),
                     ['ball']))
    rows.append(_row(1, 'memory of lake only', 66.0, 5.0, dict(ball=30.0, buoy=50.0, car=70.0),
                     ['ball']))
    rows.append(_row(2, 'memory of lake only', 60.0, 9.0, dict(ball=40.0, buoy=30.0, car=90.0),
                     ['ball']))
    # street only: ball and buoy absent in seeds 0 and 2; seed 1's memory lacks nothing
    rows.append(_row(0, 'memory of street only', 66.0, 3.0,
                     dict(ball=20.0, buoy=20.0, car=80.0), ['ball', 'buoy']))
    rows.append(_row(1, 'memory of street only', 72.0, 1.0, dict(ball=50.0, buoy=50.0, car=70.0)))
    rows.append(_row(2, 'memory of street only', 64.0, 1.0,
                     dict(ball=50.0, buoy=10.0, car=90.0), ['ball', 'buoy']))
    out = evidence.against_memory_off(rows, [0, 1, 2])

    def check(cell, diffs):
        assert cell['n'] == len(diffs)
        assert cell['values'] == pytest.approx(diffs)
        low, high = stats.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs),
                                     scale=stats.sem(diffs))
        assert cell['mean'] == pytest.approx((low + high) / 2)
        assert cell['half_width_95'] == pytest.approx((high - low) / 2)

    lake = out[('maps', 'memory of lake only')]
    check(lake['PQ'], [-10.0, -6.0, -8.0])
    check(lake['PQ_th'], [-10.0, -6.0, -8.0])
    check(lake['PQ_absent'], [20.0 - 60.0, 30.0 - 50.0, 40.0 - 70.0])
    check(lake['look_alike_flips'], [10.0, 4.0, 8.0])
    street = out[('maps', 'memory of street only')]
    check(street['PQ'], [-4.0, 0.0, -4.0])
    # seed 0: 20 against off's (60 + 40) / 2; seed 2: 30 against (70 + 30) / 2
    check(street['PQ_absent'], [20.0 - 50.0, 30.0 - 50.0])
    both = out[('maps', 'mean of the single-scene memories')]
    check(both['PQ'], [-7.0, -3.0, -6.0])
    # seed 1: only the lake row has absent classes
    check(both['PQ_absent'], [(-40.0 - 30.0) / 2, -20.0, (-30.0 - 20.0) / 2])
    assert ('maps', 'memory off') not in out


def _fake_seed_inputs(tmp_path, memories):
    """A data root with a val annotation, and for seeds 0 and 1 a labelled annotation file
    ``ann_seedS.json`` and one folder ``NAMES`` per memory name, each with one file of its
    own content; the data root."""
    data = tmp_path / 'data'
    (data / 'annotations').mkdir(parents=True)
    (data / 'annotations' / 'panoptic_val.json').write_text('{}')
    for seed in (0, 1):
        (tmp_path / f'ann_seed{seed}.json').write_text(json.dumps(dict(seed=seed)))
        for name in memories:
            (tmp_path / f'{name}{seed}').mkdir()
            (tmp_path / f'{name}{seed}' / 'values.bin').write_bytes(bytes([seed]))
    return data


def _fake_arms(evidence, monkeypatch, tmp_path, results, arms):
    """The arms phase of seeds 0 and 1 with training and test replaced: ``results`` maps
    (arm, seed) to its PQ_th (PQ is 20 more; flips 50 - PQ_th); the ledgers in tmp_path.
    Returns the parsed arguments and the list the work dirs trained are appended to."""
    data = _fake_seed_inputs(tmp_path, ('memory', 'oracle'))
    inputs = {seed: (str(tmp_path / f'ann_seed{seed}.json'), str(tmp_path / f'memory{seed}'),
                     str(tmp_path / f'oracle{seed}')) for seed in (0, 1)}
    trained = []

    def train(work, config, options):
        trained.append(osp.basename(work))
        return 1.0

    def evaluate(args, work, config, name, options):
        arm, _, seed = osp.basename(work).rpartition('_n5_seed')
        pq = results[(arm, int(seed))]
        return dict(PQ=pq + 20, PQ_th=pq, look_alike_flips=50.0 - pq)

    monkeypatch.setattr(evidence, 'seed_inputs', lambda args, seed, oracle: inputs[seed])
    monkeypatch.setattr(evidence, 'stamped_training', train)
    monkeypatch.setattr(evidence, 'evaluate', evaluate)
    monkeypatch.setattr(evidence, 'ledger_of', lambda args, arm: evidence.RunLedger(
        str(tmp_path / 'results' / f'{arm == "mask2former"}_runs.json')))
    args = evidence.parse_args(['arms', '--iters', '7', '--size', '5', '--seeds', '0', '1',
                                '--arms', *arms, '--data-root', str(data), '--jobs', '1',
                                '--work-dir', str(tmp_path / 'work')])
    return args, trained


def test_arms_train_only_the_runs_the_committed_ledger_lacks(evidence, monkeypatch, tmp_path):
    """Seeds of the arms phase accumulate over sessions on machines that keep nothing: a
    second session trains nothing the ledger holds for the same inputs, and retrains a run
    whose memory (or labelled subset) changed."""
    results = {('mask2former', 0): 40.0, ('mask2former', 1): 42.0, ('oracle', 0): 45.0,
               ('oracle', 1): 44.0}
    args, trained = _fake_arms(evidence, monkeypatch, tmp_path, results, ['oracle'])
    first, _ = evidence.arms(args)
    assert sorted(trained) == ['mask2former_n5_seed0', 'mask2former_n5_seed1',
                               'oracle_n5_seed0', 'oracle_n5_seed1']
    # oracle - Mask2Former on PQ_th: +5, +2
    assert first['paired']['oracle']['PQ_th']['values'] == [5.0, 2.0]
    trained.clear()
    second, text = evidence.arms(args)  # the next session: nothing left to train
    assert trained == []
    assert second['paired'] == first['paired']
    assert {r['result']['origin'] for r in second['runs']} == {'ledger'}
    assert '| oracle | 1 | 64.0 | 44.0 | 6.0 % | ledger |' in text
    # a rebuilt oracle memory of seed 1 with other values: only that run is redone
    (tmp_path / 'oracle1' / 'values.bin').write_bytes(b'\x07')
    results[('oracle', 1)] = 43.0
    third, _ = evidence.arms(args)
    assert trained == ['oracle_n5_seed1']
    assert third['paired']['oracle']['PQ_th']['values'] == [5.0, 1.0]
    assert third['maps_against'] == {}  # no maps arm: nothing to compare it with


def test_maps_is_paired_with_each_control_on_the_same_seeds(evidence, monkeypatch, tmp_path):
    """The pre-registered reading compares MAPS with its controls (learned tokens, shuffled
    memory) and the oracle seed by seed, not through their differences from Mask2Former's
    means: hand-computed differences and 95 % t-intervals (t(0.975, 1) = 12.706)."""
    results = {('mask2former', 0): 30.0, ('mask2former', 1): 31.0,
               ('learned_tokens', 0): 31.0, ('learned_tokens', 1): 26.0,
               ('maps_shuffled', 0): 30.5, ('maps_shuffled', 1): 27.5,
               ('maps', 0): 38.5, ('maps', 1): 35.0, ('oracle', 0): 35.0, ('oracle', 1): 35.0}
    args, _ = _fake_arms(evidence, monkeypatch, tmp_path, results,
                         ['learned_tokens', 'maps_shuffled', 'maps', 'oracle'])
    out, text = evidence.arms(args)
    against = out['maps_against']
    assert list(against) == ['learned_tokens', 'maps_shuffled', 'oracle']
    # maps - learned tokens: +7.5, +9.0; mean 8.25, sd 1.0607, half-width 12.706 * 0.75
    assert against['learned_tokens']['PQ_th']['values'] == [7.5, 9.0]
    assert against['learned_tokens']['PQ_th']['mean'] == pytest.approx(8.25)
    assert against['learned_tokens']['PQ_th']['half_width_95'] == pytest.approx(9.5295, abs=1e-3)
    # flips are 50 - PQ_th: the difference changes sign
    assert against['maps_shuffled']['look_alike_flips']['values'] == [-8.0, -7.5]
    assert against['oracle']['PQ']['values'] == [3.5, 0.0]
    assert '| maps_shuffled | +7.75 ± 3.18 | +7.75 ± 3.18 | -7.75 ± 3.18 |' in text
    assert '| maps - arm (n = 2) | ΔPQ | ΔPQ_th | Δ look-alike flips |' in text


def test_the_input_embedding_arm_is_paired_with_the_shuffled_memory_it_adds_to(
        evidence, monkeypatch, tmp_path):
    """aug_cls_shuffled is maps_shuffled plus the input's own embedding: the reading of Next
    item 10 needs (aug_cls_shuffled - maps_shuffled) seed by seed, besides (maps - arm).
    Hand-computed: +1.0 and +3.0, mean 2.0, sd 1.4142, half-width 12.706 * 1.0."""
    results = {('mask2former', 0): 30.0, ('mask2former', 1): 31.0,
               ('maps_shuffled', 0): 29.0, ('maps_shuffled', 1): 27.0,
               ('aug_cls_shuffled', 0): 30.0, ('aug_cls_shuffled', 1): 30.0,
               ('maps', 0): 38.0, ('maps', 1): 35.0}
    args, _ = _fake_arms(evidence, monkeypatch, tmp_path, results,
                         ['maps', 'maps_shuffled', 'aug_cls_shuffled'])
    out, text = evidence.arms(args)
    added = out['against_base']
    assert list(added) == ['aug_cls_shuffled - maps_shuffled']
    cell = added['aug_cls_shuffled - maps_shuffled']['PQ_th']
    assert cell['values'] == [1.0, 3.0]
    assert cell['half_width_95'] == pytest.approx(12.706, abs=1e-3)
    assert out['maps_against']['aug_cls_shuffled']['PQ_th']['values'] == [8.0, 5.0]
    assert '| aug_cls_shuffled - maps_shuffled | +2.00 ± 12.71 | +2.00 ± 12.71 |' in text
    # without its base there is nothing to pair it with
    args, _ = _fake_arms(evidence, monkeypatch, tmp_path / 'alone', results,
                         ['maps', 'aug_cls_shuffled'])
    assert evidence.arms(args)[0]['against_base'] == {}


def test_counterfactual_tests_only_what_the_committed_ledger_lacks(evidence, monkeypatch,
                                                                  tmp_path):
    """The counterfactual phase (a trained MAPS tested with 7 memories) also accumulates over
    sessions: a second session trains and tests nothing the ledger holds, and a seed whose
    single-scene memory was rebuilt with other content is trained and tested again (that
    seed only); the paired statistic is the same whichever call computed the rows."""
    data = _fake_seed_inputs(tmp_path, ('memory', 'street', 'lake'))
    inputs = {seed: (str(tmp_path / f'ann_seed{seed}.json'), str(tmp_path / f'memory{seed}'),
                     None) for seed in (0, 1)}
    trained, tested = [], []
    # PQ per (seed, test); memory off is the reference
    pq = {0: {'own memory': 70.0, 'memory off': 66.0, 'shuffled memory': 60.0,
              'memory of lake only': 58.0, 'memory of street only': 64.0},
          1: {'own memory': 71.0, 'memory off': 68.0, 'shuffled memory': 63.0,
              'memory of lake only': 61.0, 'memory of street only': 65.0}}

    def train(work, config, options):
        trained.append(osp.basename(work))
        return 1.0

    def evaluate(args, work, config, name, options, extra=(), memory_classes=None):
        seed = int(osp.basename(work).rpartition('_seed')[2])
        tested.append((seed, name))
        return dict(PQ=pq[seed][name], PQ_th=pq[seed][name] - 30, look_alike_flips=5.0,
                    PQ_absent=None, absent_classes=[], class_PQ={})

    def scene_subsets(args, ann):
        seed = json.loads(open(ann).read())['seed']
        return {scene: f'{scene}{seed}' for scene in ('lake', 'street')}

    monkeypatch.setattr(evidence, 'seed_inputs', lambda args, seed: inputs[seed])
    monkeypatch.setattr(evidence, 'scene_subsets', scene_subsets)
    monkeypatch.setattr(evidence, 'build_memory',
                        lambda args, ann, root: str(tmp_path / ann))
    monkeypatch.setattr(evidence, 'categories_in', lambda ann: {'person'})
    monkeypatch.setattr(evidence, 'stamped_training', train)
    monkeypatch.setattr(evidence, 'evaluate', evaluate)
    monkeypatch.setattr(evidence, 'ledger_of', lambda args, arm: evidence.RunLedger(
        str(tmp_path / 'results' / 'maps_runs.json')))
    args = evidence.parse_args(['counterfactual', '--iters', '7', '--size', '5', '--seeds',
                                '0', '1', '--data-root', str(data), '--jobs', '1',
                                '--work-dir', str(tmp_path / 'work')])
    first, _ = evidence.counterfactual(args)
    assert sorted(trained) == ['maps_n5_seed0', 'maps_n5_seed1']
    assert len(tested) == 2 * 5
    cells = {(c['arm'], c['test']): c for c in first['against_memory_off']}
    # lake only - memory off: -8, -7
    assert cells[('maps', 'memory of lake only')]['PQ']['values'] == [-8.0, -7.0]
    trained.clear(), tested.clear()
    second, text = evidence.counterfactual(args)  # the next session: nothing to run
    assert trained == [] and tested == []
    assert second['against_memory_off'] == first['against_memory_off']
    assert '| maps | 1 | memory of lake only | 61.0 | 31.0 | - | 5.0 % | ledger |' in text
    # seed 1's street-only memory rebuilt with other content: only seed 1 runs again
    (tmp_path / 'street1' / 'values.bin').write_bytes(b'\x07')
    pq[1]['memory of street only'] = 62.0
    third, _ = evidence.counterfactual(args)
    assert trained == ['maps_n5_seed1'] and {s for s, _ in tested} == {1}
    cells = {(c['arm'], c['test']): c for c in third['against_memory_off']}
    assert cells[('maps', 'memory of street only')]['PQ']['values'] == [-2.0, -6.0]


def test_each_arm_reads_and_writes_its_own_committed_ledger(evidence):
    args = evidence.parse_args(['arms', '--data-variant', 'landmarks',
                                '--maps-config', 'configs/maps/other.py'])
    results = osp.join(evidence.ROOT, 'benchmarks', 'results')
    assert evidence.ledger_of(args, 'mask2former').path == \
        osp.join(results, 'maps_evidence_landmarks_runs.json')
    assert evidence.ledger_of(args, 'oracle').path == \
        osp.join(results, 'maps_evidence_landmarks_other_runs.json')


def test_the_shuffled_controls_read_a_wrong_memory_at_test_as_in_training(evidence):
    """The arms' options resolved over the MAPS config as tools/train.py and tools/test.py
    resolve them: the shuffled controls (aug_cls_shuffled with the input's own embedding as
    MAPS-Aug-CLS's extra scene token) read another image's retrieval in training and at
    test; maps_wrong50's and maps_wrong20's wrong memories are training-only augmentations."""
    from mmengine.config import Config

    train = load_tool('tools/train.py')

    def resolved(options):
        cfg = Config.fromfile(evidence.MAPS)
        cfg.merge_from_dict(train.parse_args([evidence.MAPS, '--cfg-options',
                                              *options]).cfg_options)
        return (cfg.memory.retrieval.get('wrong_memory_prob', 0.0),
                cfg.memory.retrieval.get('wrong_memory_at_test', False),
                cfg.model.panoptic_head.get('aug_cls', False), cfg.memory.root,
                cfg.randomness.seed)

    args = evidence.parse_args(['arms', '--iters', '7', '--size', '5'])
    expected = {  # (training, test)
        'maps': ((0.0, False, False), (0.0, False, False)),
        'maps_shuffled': ((1.0, True, False), (1.0, True, False)),
        'aug_cls_shuffled': ((1.0, True, True), (1.0, True, True)),
        'maps_wrong50': ((0.5, False, False), (0.0, False, False)),
        'maps_wrong20': ((0.2, False, False), (0.0, False, False)),
    }
    for arm, (training, test) in expected.items():
        _, config, train_options, test_options = evidence.arm_plan(args, arm, 3, 'ann.json',
                                                                   'memory')
        assert config == evidence.MAPS
        assert resolved(train_options) == training + ('memory', 3), arm
        assert resolved(test_options) == test + ('memory', 3), arm
    assert 'aug_cls_shuffled' in evidence.RETRIEVING_ARMS
