"""MemoryHook and the memory it builds: attaching and fit checks, the leak policy (by image
content, whatever dataset wrapper, annotation file or numbering brought the image), the
evaluation refusal, k' sampling seeds, evaluation statistics and checkpoint meta."""
import copy
import hashlib
import json
import logging
import os
import os.path as osp
import re
import shutil
import warnings
from types import SimpleNamespace

import mmcv
import numpy as np
import pytest
import torch
from mmengine.model import BaseModel

from mmdet.registry import DATASETS, HOOKS
from mmdet.structures import DetDataSample

from mmmaps.memory import ExternalMemory, MemoryBankError, MemoryRoot, build_external_memory

from ..conftest import MEMORY_CFG, load_config_with_root

LOGGER_NAME = 'test_memory_hook'


class MemoryModel(BaseModel):
    """The minimal memory-augmented model protocol the hook relies on: ``attach_memory``,
    which (like MAPS) checks that the memory holds the value dims the model reads."""

    def __init__(self, scene_dim=None, object_dim=None):
        super().__init__()
        self.dims = (scene_dim, object_dim)
        self.memory = None
        self.layer = torch.nn.Linear(2, 2)

    def attach_memory(self, memory):
        memory.check_fits(*self.dims)
        self.memory = memory

    def forward(self, *args, **kwargs):
        raise NotImplementedError


def make_runner(cfg, model, seed=0, train=None, val=None, test=None, log_processor=None):
    """A stand-in Runner: what MemoryHook reads (cfg, model, seed, logger, the datasets of
    the dataloaders, optionally the log processor)."""
    runner = SimpleNamespace(cfg=cfg, model=model, seed=seed,
                             logger=logging.getLogger(LOGGER_NAME))
    for split, dataset in (('train', train), ('val', val), ('test', test)):
        if dataset is not None:
            setattr(runner, f'{split}_dataloader', SimpleNamespace(dataset=dataset))
    if log_processor is not None:
        runner.log_processor = log_processor
    return runner


def build_dataset(dataset_cfg, **overrides):
    """A real mmdet dataset from a config's dataset entry (with its pipeline)."""
    from mmengine.registry import DefaultScope
    dataset_cfg = copy.deepcopy(dataset_cfg)
    dataset_cfg.update(overrides)
    with DefaultScope.overwrite_default_scope('mmdet'):
        return DATASETS.build(dataset_cfg)


def image_paths(dataset):
    """Every sample's image file, in dataset order."""
    return [dataset.get_data_info(i)['img_path'] for i in range(len(dataset))]


def image_ids(dataset):
    return [int(dataset.get_data_info(i)['img_id']) for i in range(len(dataset))]


def file_sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest().encode()


def rows_holding(bank, path):
    """Scene bank rows whose recorded content identity is that of the file ``path``."""
    return set(np.flatnonzero(np.asarray(bank.identities) == file_sha256(path)).tolist())


def load_rgb(path):
    """The image as the memory takes it: RGB (3, h, w) on the 0-255 scale."""
    image = mmcv.imread(path, channel_order='rgb')
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


def write_ann_copy(src, dst, id_map=None, indent=None, reverse=False):
    """Write a copy of a COCO-panoptic file: ids renumbered by ``id_map``, re-indented,
    images and annotations in reverse order."""
    with open(src) as f:
        data = json.load(f)
    if id_map is not None:
        for image in data['images']:
            image['id'] = id_map[image['id']]
        for ann in data['annotations']:
            ann['image_id'] = id_map[ann['image_id']]
    if reverse:
        data['images'].reverse()
        data['annotations'].reverse()
    with open(dst, 'w') as f:
        json.dump(data, f, indent=indent)
    return str(dst)


def copy_train_pictures(cfg, folder, offset):
    """The train pictures copied into ``folder`` under other names, annotated by a copy of
    the train file renumbered by ``offset``: the same bytes, nothing else in common.
    Returns the dataset config."""
    train = cfg.train_dataloader.dataset
    with open(osp.join(train.data_root, train.ann_file)) as f:
        data = json.load(f)
    pictures = osp.join(str(folder), 'pictures')
    os.makedirs(pictures)
    for image in data['images']:
        name = f'picture_{image["id"] + offset}.jpg'
        shutil.copy(osp.join(train.data_root, train.data_prefix.img, image['file_name']),
                    osp.join(pictures, name))
        image.update(id=image['id'] + offset, file_name=name)
    for ann in data['annotations']:
        ann['image_id'] += offset
    ann_file = osp.join(str(folder), 'pictures.json')
    with open(ann_file, 'w') as f:
        json.dump(data, f)
    return dict(copy.deepcopy(train), ann_file=ann_file, data_prefix=dict(
        img=pictures + '/', seg=train.data_prefix.seg))


@pytest.fixture
def cfg(synthetic_root, synthetic_memory):
    return load_config_with_root(MEMORY_CFG, synthetic_root, {'memory.root': synthetic_memory})


@pytest.fixture(scope='module')
def module_cfg(synthetic_root, synthetic_memory):
    return load_config_with_root(MEMORY_CFG, synthetic_root, {'memory.root': synthetic_memory})


@pytest.fixture(scope='module')
def memory(module_cfg):
    return build_external_memory(module_cfg.memory, device='cpu')


@pytest.fixture(scope='module')
def train_dataset(module_cfg):
    return build_dataset(module_cfg.train_dataloader.dataset)


@pytest.fixture(scope='module')
def val_dataset(module_cfg):
    return build_dataset(module_cfg.val_dataloader.dataset)


def test_hook_attaches_the_memory_of_the_config(cfg, synthetic_memory, train_dataset,
                                                val_dataset, caplog):
    root = MemoryRoot(synthetic_memory)
    model = MemoryModel(root.scene_bank.value_dim, root.object_bank.value_dim)
    processor = SimpleNamespace(window_size=10, custom_cfg=[
        dict(data_src='loss', method_name='mean', window_size=10)])
    runner = make_runner(cfg, model, seed=123, train=train_dataset, val=val_dataset,
                         test=val_dataset, log_processor=processor)
    hook = HOOKS.build(dict(type='MemoryHook'))
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        hook.before_run(runner)
        hook.before_train(runner)
    memory = model.memory
    assert isinstance(memory, ExternalMemory) and hook.memory is memory
    assert memory.root.root == synthetic_memory
    assert memory.k == cfg.memory.retrieval.k == 5
    assert memory.retriever.max_objects == cfg.memory.retrieval.max_objects == 40
    assert memory.random_sampling is None and not memory.allow_eval_overlap
    assert (memory.seed, memory.rank) == (123, 0)  # the run's seed seeds the k' sampling
    # the statistics are averaged over the log window, like the losses
    added = [c for c in processor.custom_cfg if c['data_src'].startswith('retrieval/')]
    assert sorted(c['data_src'] for c in added) == [
        'retrieval/key_cache_hits', 'retrieval/object_slots', 'retrieval/scene_sim',
        'retrieval/scene_sim_k']
    assert all(c['method_name'] == 'mean' and c['window_size'] == 10 for c in added)
    assert f'memory {synthetic_memory} (built from' in caplog.text
    assert 'leak guard: 8 of the 8 training images are in the memory' in caplog.text
    hook.before_val(runner)  # the val images are not in the memory
    hook.before_test(runner)

    # training: no training image retrieves itself; evaluation: nothing is excluded, so
    # the same queries find themselves first (the guard is what keeps them out)
    paths = image_paths(train_dataset)
    images = [load_rgb(p) for p in paths]
    guarded = memory.retrieve(images, paths, training=True)
    unguarded = memory.retrieve(images, paths, training=False)
    # training keys: the key encoder on the images (memory.retrieval.query_keys='model_input');
    # at evaluation the memory's query cache serves the whole pictures it holds
    assert not guarded.keys_from_cache.any()
    assert memory.retrieve(images, paths, training=False, with_objects=False,
                           whole_pictures=[True] * len(paths)).keys_from_cache.all()
    assert guarded.object_values.shape[-1] == root.object_bank.value_dim
    for b, path in enumerate(paths):
        (own, ) = rows_holding(root.scene_bank, path)
        assert own not in guarded.rows[b].tolist()
        assert (guarded.rows[b] >= 0).all()  # still k of the other 7 images
        assert unguarded.rows[b, 0] == own
        assert float(unguarded.scores[b, 0]) == pytest.approx(1, abs=1e-5)
    assert memory.self_retrievals(guarded, paths) == [False] * len(paths)
    assert memory.self_retrievals(unguarded, paths) == [True] * len(paths)


def test_hook_rejects_a_memory_that_does_not_fit(cfg, synthetic_root, synthetic_memory):
    root = MemoryRoot(synthetic_memory)
    wrong_dim = MemoryModel(object_dim=root.object_bank.value_dim + 1)
    with pytest.raises(MemoryBankError, match=r'manifest\.json\) does not fit the model: '
                       r'object value dim: bank 384, model 385'):
        HOOKS.build(dict(type='MemoryHook')).before_run(make_runner(cfg, wrong_dim))
    wrong_scene = MemoryModel(scene_dim=root.scene_bank.value_dim * 2)
    with pytest.raises(MemoryBankError, match='scene value dim: bank 384, model 768'):
        HOOKS.build(dict(type='MemoryHook')).before_run(make_runner(cfg, wrong_scene))
    other = load_config_with_root(MEMORY_CFG, synthetic_root,
                                  {'memory.root': synthetic_memory, 'memory.key_encoder.seed': 1})
    with pytest.raises(MemoryBankError, match='another key encoder.*weights_sha256'):
        HOOKS.build(dict(type='MemoryHook')).before_run(make_runner(other, MemoryModel()))
    with pytest.raises(TypeError, match='attach_memory'):
        HOOKS.build(dict(type='MemoryHook')).before_run(
            make_runner(cfg, torch.nn.Linear(1, 1)))
    unknown = copy.deepcopy(cfg)
    unknown.memory.retrieval.exclude_self = True  # an argument of the old hook
    with pytest.raises(KeyError, match=r"unknown keys \['exclude_self'\]"):
        HOOKS.build(dict(type='MemoryHook')).before_run(make_runner(unknown, MemoryModel()))
    sampling = copy.deepcopy(cfg)
    sampling.memory.retrieval.random_sampling = sampling.memory.retrieval.k
    with pytest.raises(ValueError, match='random_sampling'):
        HOOKS.build(dict(type='MemoryHook')).before_run(make_runner(sampling, MemoryModel()))
    no_memory = copy.deepcopy(cfg)
    no_memory.pop('memory')
    with pytest.raises(KeyError, match='no `memory` section'):
        HOOKS.build(dict(type='MemoryHook')).before_run(make_runner(no_memory, MemoryModel()))


def test_hook_fails_on_corrupt_bank_naming_the_file(cfg, synthetic_memory, tmp_path):
    copy_dir = str(tmp_path / 'memory')
    shutil.copytree(synthetic_memory, copy_dir)
    values = osp.join(copy_dir, 'object', 'values.bin')
    with open(values, 'r+b') as f:
        f.truncate(osp.getsize(values) // 2)
    cfg.memory.root = copy_dir
    with pytest.raises(MemoryBankError, match='object/values.bin'):
        HOOKS.build(dict(type='MemoryHook')).before_run(make_runner(cfg, MemoryModel()))


def test_hook_refuses_to_evaluate_on_memory_images(cfg, synthetic_root, tmp_path):
    """By content: the train file itself, a renumbered re-indented copy of it elsewhere, a
    val set with one training image mixed in and copies of the train pictures under other
    names are all refused."""
    train_ann = osp.join(synthetic_root, 'annotations', 'panoptic_train.json')
    val_cfg = cfg.val_dataloader.dataset
    on_train = build_dataset(val_cfg, ann_file=train_ann, data_prefix=dict(
        img='train/', seg='annotations/panoptic_train/'))
    renumbered = build_dataset(val_cfg, data_prefix=dict(
        img='train/', seg='annotations/panoptic_train/'), ann_file=write_ann_copy(
            train_ann, tmp_path / 'renumbered.json', {i: 1000 + i for i in range(1, 9)},
            indent=2, reverse=True))
    assert not set(image_ids(renumbered)) & set(range(1, 9))
    copied = build_dataset(copy_train_pictures(cfg, tmp_path, 2000), test_mode=True)
    mixed = build_dataset(dict(type='ConcatDataset', datasets=[
        copy.deepcopy(val_cfg), dict(copy.deepcopy(val_cfg), ann_file=train_ann, indices=1,
                                     data_prefix=dict(img='train/',
                                                      seg='annotations/panoptic_train/'))]))
    assert len(mixed) == 5
    runner = make_runner(cfg, MemoryModel(), val=on_train, test=renumbered)
    hook = HOOKS.build(dict(type='MemoryHook'))
    hook.before_run(runner)
    with pytest.raises(MemoryBankError, match=r'8 of the 8 images of the val dataset are in '
                       r'the memory.*retrieve itself'):
        hook.before_val(runner)
    with pytest.raises(MemoryBankError, match='8 of the 8 images of the test dataset'):
        hook.before_test(runner)
    runner.val_dataloader.dataset = mixed
    with pytest.raises(MemoryBankError, match=r'1 of the 5 images .*000000000001\.jpg'):
        hook.before_val(runner)
    runner.test_dataloader.dataset = copied
    with pytest.raises(MemoryBankError, match=r'8 of the 8 images .*picture_2001\.jpg'):
        hook.before_test(runner)
    # allowed explicitly
    cfg.memory.retrieval.allow_eval_overlap = True
    allowed = HOOKS.build(dict(type='MemoryHook'))
    allowed.before_run(runner)
    allowed.before_val(runner)
    allowed.before_test(runner)


# ------------------------------------------------------------------ leak guard by content
def _subset(cfg, tmp_path):
    dataset = build_dataset(cfg.train_dataloader.dataset, indices=[1, 3, 5, 7])
    return dataset, [True] * 4


def _reindented_copy(cfg, tmp_path):
    """The train annotations re-saved elsewhere: indented, reversed, ids 501..508."""
    train = cfg.train_dataloader.dataset
    ann = write_ann_copy(osp.join(train.data_root, train.ann_file), tmp_path / 'copy.json',
                         {i: 500 + i for i in range(1, 9)}, indent=4, reverse=True)
    dataset = build_dataset(train, ann_file=ann)
    assert sorted(image_ids(dataset)) == list(range(501, 509))  # no id is a memory id
    return dataset, [True] * 8


def _copied_pictures(cfg, tmp_path):
    """The train pictures copied to another folder under other names and ids."""
    dataset = build_dataset(copy_train_pictures(cfg, tmp_path, 700))
    assert all(osp.basename(p).startswith('picture_7') for p in image_paths(dataset))
    return dataset, [True] * 8


def _concat(cfg, tmp_path):
    dataset = build_dataset(dict(type='ConcatDataset', datasets=[
        copy.deepcopy(cfg.train_dataloader.dataset), copy.deepcopy(cfg.val_dataloader.dataset)]))
    return dataset, [True] * 8 + [False] * 4


@pytest.mark.parametrize('variant', [_subset, _reindented_copy, _copied_pictures, _concat],
                         ids=['subset', 'reindented_copy', 'copied_pictures', 'concat'])
def test_leak_guard_holds_for_other_datasets_of_the_train_images(
        variant, module_cfg, memory, tmp_path, caplog):
    """The memory is built from the original train split; training on a subset of it, on a
    renumbered re-indented copy of its annotation file, on copies of its pictures elsewhere,
    or on a ConcatDataset holding it never retrieves a query's own picture."""
    dataset, expected = variant(module_cfg, tmp_path)
    paths = image_paths(dataset)
    assert memory.in_memory(paths) == expected
    bank = memory.root.scene_bank
    assert [len(rows_holding(bank, p)) for p in paths] == [int(e) for e in expected]
    if variant is _subset:
        assert sum(expected) == bank.num_entries // 2  # half of the memory's images
    hook = HOOKS.build(dict(type='MemoryHook'))
    hook.memory = memory
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        hook.before_train(make_runner(module_cfg, MemoryModel(), train=dataset))
    assert (f'leak guard: {sum(expected)} of the {len(paths)} training images are in the '
            'memory') in caplog.text

    images = [load_rgb(p) for p in paths]
    guarded = memory.retrieve(images, paths, training=True)
    unguarded = memory.retrieve(images, paths, training=False)
    # the query cache serves keys by content, whatever the ids of this annotation file (at
    # evaluation, whole pictures; training keys come from the key encoder)
    assert not guarded.keys_from_cache.any()
    served = memory.retrieve(images, paths, training=False, with_objects=False,
                             whole_pictures=[True] * len(paths))
    assert served.keys_from_cache.tolist() == expected
    assert memory.self_retrievals(guarded, paths) == [False] * len(paths)
    assert memory.self_retrievals(unguarded, paths) == expected  # the guard made it
    for b, path in enumerate(paths):
        own = rows_holding(bank, path)
        assert not own & set(guarded.rows[b].tolist())
        assert (guarded.rows[b] >= 0).all()
        if expected[b]:
            assert unguarded.rows[b, 0].item() in own
        else:  # images not in the memory lose nothing in training
            assert torch.equal(guarded.rows[b], unguarded.rows[b])


def test_val_image_with_a_train_id_retrieves_that_train_image(cfg, memory, synthetic_root,
                                                              tmp_path):
    """Ids name files, not pictures: a val set numbered 1..N like the train set (as the
    ADE20K/Cityscapes converters do) is evaluated, and its image i may retrieve train image i."""
    bank = memory.root.scene_bank
    keys = np.asarray(bank.keys, np.float32)
    val_ann = osp.join(synthetic_root, 'annotations', 'panoptic_val.json')
    with open(val_ann) as f:
        val_images = json.load(f)['images']
    paths = [osp.join(synthetic_root, 'val', image['file_name']) for image in val_images]
    with torch.no_grad():
        queries = memory.key_encoder([load_rgb(p) for p in paths]).float().cpu().numpy()
    sims = queries @ keys.T  # exact search, independent of the index
    nearest = [int(bank.image_ids[r]) for r in sims.argmax(1)]
    chosen = int(sims.max(1).argmax())  # the val image closest to a train image
    free = iter(i for i in range(1, bank.num_entries + 1) if i != nearest[chosen])
    id_map = {image['id']: nearest[chosen] if n == chosen else next(free)
              for n, image in enumerate(val_images)}
    collided = write_ann_copy(val_ann, tmp_path / 'panoptic_val_1toN.json', id_map, indent=1)

    dataset = build_dataset(cfg.val_dataloader.dataset, ann_file=collided)
    ids = image_ids(dataset)
    assert set(ids) <= set(bank.image_ids.tolist())  # every val id is a train id
    by_path = dict(zip(image_paths(dataset), ids))
    assert by_path[paths[chosen]] == nearest[chosen]

    runner = make_runner(cfg, MemoryModel(), val=dataset)
    hook = HOOKS.build(dict(type='MemoryHook'))
    hook.before_run(runner)
    hook.before_val(runner)  # other pictures: not refused, whatever their ids
    images = [load_rgb(p) for p in paths]
    for training in (False, True):  # nothing to exclude either way: not in the memory
        result = hook.memory.retrieve(images, paths, training=training)
        assert result.image_ids[:, 0].tolist() == nearest
        assert result.image_ids[chosen, 0] == by_path[paths[chosen]]
        np.testing.assert_allclose(result.scores[:, 0].numpy(), sims.max(1), atol=1e-4)
        assert not result.keys_from_cache.any()
        assert hook.memory.self_retrievals(result, paths) == [False] * len(paths)


def test_k_prime_sampling_is_seeded(synthetic_root, synthetic_memory, train_dataset):
    """Random sampling (k'): the same seed retrieves the same, another seed or rank not;
    every draw is among the top-k' other images; evaluation does not sample."""
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root, {
        'memory.root': synthetic_memory, 'memory.retrieval.k': 2,
        'memory.retrieval.random_sampling': 6})
    k, k_prime = 2, 6
    runs = {name: build_external_memory(cfg.memory, device='cpu', seed=seed, rank=rank)
            for name, seed, rank in (('a', 0, 0), ('b', 0, 0), ('seed1', 1, 0),
                                     ('rank1', 0, 1))}
    paths = image_paths(train_dataset)
    images = [load_rgb(p) for p in paths]

    def draws(memory, training=True):
        return [memory.retrieve(images, paths, training=training, with_objects=False)
                for _ in range(3)]

    sampled = {name: draws(memory) for name, memory in runs.items()}

    def rows(results):
        return [r.rows.tolist() for r in results]

    assert rows(sampled['a']) == rows(sampled['b'])
    assert rows(sampled['a']) != rows(sampled['seed1'])
    assert rows(sampled['a']) != rows(sampled['rank1'])

    bank = runs['a'].root.scene_bank
    keys = np.asarray(bank.keys, np.float32)
    outside_top_k = 0
    for result in sampled['a'] + sampled['seed1']:
        for b, path in enumerate(paths):
            (own, ) = rows_holding(bank, path)
            order = [r for r in np.argsort(-(keys[own] @ keys.T)).tolist() if r != own]
            got = result.rows[b].tolist()
            assert len(set(got)) == k and set(got) <= set(order[:k_prime])
            outside_top_k += len(set(got) - set(order[:k]))
            assert result.scores[b, 0] >= result.scores[b, 1]  # kept in rank order
    assert outside_top_k > 0  # k' is not inert
    # evaluation: the plain top-k, whatever the seed (the own picture first)
    for name in ('a', 'seed1'):
        for result in draws(runs[name], training=False):
            for b, path in enumerate(paths):
                (own, ) = rows_holding(bank, path)
                exact = np.argsort(-(keys[own] @ keys.T))[:k].tolist()
                assert result.rows[b].tolist() == exact


def test_evaluation_statistics_are_averaged_and_logged(cfg, val_dataset, caplog):
    hook = HOOKS.build(dict(type='MemoryHook'))
    runner = make_runner(cfg, MemoryModel(), val=val_dataset, test=val_dataset)
    hook.before_run(runner)
    memory = hook.memory
    paths = image_paths(val_dataset)
    images = [load_rgb(p) for p in paths]
    result = memory.retrieve(images, paths, training=False)
    samples = []
    for b in range(len(paths)):
        sample = DetDataSample()
        sample.set_metainfo(dict(retrieval=result.select(b).without_values()))
        samples.append(sample)
    # expected, by exact search over the bank
    bank, objects = memory.root.scene_bank, memory.root.object_bank
    keys = np.asarray(bank.keys, np.float32)
    with torch.no_grad():
        queries = memory.key_encoder(images).float().cpu().numpy()
    sims = np.sort(queries @ keys.T, axis=1)[:, ::-1][:, :memory.k]
    top = np.argsort(-(queries @ keys.T), axis=1)[:, :memory.k]
    slots = [min(40, int(sum(objects.offsets[r + 1] - objects.offsets[r] for r in row)))
             for row in top]
    expected = dict(scene_sim=sims[:, 0].mean(), scene_sim_k=sims.mean(),
                    object_slots=np.mean(slots) / 40, key_cache_hits=0.0)
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        hook.after_test_iter(runner, 0, outputs=samples[:2])
        hook.after_test_iter(runner, 1, outputs=samples[2:])
        hook.after_test_epoch(runner)
        hook.after_val_iter(runner, 0, outputs=samples[:1])
        hook.after_val_epoch(runner)
        hook.after_val_epoch(runner)  # nothing collected since: nothing logged
    lines = [line for line in caplog.text.splitlines() if 'retrieval (' in line]
    assert len(lines) == 2, lines
    assert f'retrieval (test) from {memory.root.root}: ' in lines[0]
    assert f'retrieval (val) from {memory.root.root}: ' in lines[1]
    logged = {m[0]: float(m[1]) for m in re.findall(r'retrieval/(\w+)=([\d.]+)', lines[0])}
    assert set(logged) == set(expected)
    for name, value in expected.items():
        assert logged[name] == pytest.approx(value, abs=1e-4), name
    first = {m[0]: float(m[1]) for m in re.findall(r'retrieval/(\w+)=([\d.]+)', lines[1])}
    assert first['scene_sim'] == pytest.approx(sims[0, 0], abs=1e-4)


def test_checkpoint_meta_records_memory_and_warns_on_swap(cfg, synthetic_memory):
    model = MemoryModel()
    hook = HOOKS.build(dict(type='MemoryHook'))
    runner = make_runner(cfg, model)
    checkpoint = dict(meta={})
    hook.before_save_checkpoint(runner, checkpoint)  # no memory yet: nothing recorded
    assert checkpoint == dict(meta={})
    hook.before_run(runner)
    hook.before_save_checkpoint(runner, checkpoint)
    saved = checkpoint['meta']['memory']
    with open(osp.join(synthetic_memory, 'manifest.json'), 'rb') as f:
        assert saved['manifest_sha256'] == hashlib.sha256(f.read()).hexdigest()
    assert saved['root'] == synthetic_memory and saved['num_images'] == 8
    assert (saved['key_dim'], saved['scene_dim'], saved['object_dim']) == (384, 384, 384)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        hook.after_load_checkpoint(runner, checkpoint)  # same memory: silent
    checkpoint['meta']['memory']['manifest_sha256'] = 'f' * 64
    with pytest.warns(UserWarning, match='MEMORY MISMATCH'):
        hook.after_load_checkpoint(runner, checkpoint)
