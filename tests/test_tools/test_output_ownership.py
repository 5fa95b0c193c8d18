"""Tools that publish into ``--out`` only replace what they wrote, and only with ``--force``.

Every tool is run as a subprocess, the way a user would. A refusal must exit non-zero, name
the path, and leave every byte under it as it was (checked by sha256 of every file).
"""
import hashlib
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

from tests.conftest import MEMORY_CFG, REPO_ROOT
from tests.test_datasets.test_converters import _tool, make_ade20k, make_cityscapes

SYNTHETIC_TOOL = osp.join('tools', 'dataset_converters', 'make_synthetic_panoptic.py')
ADE_TOOL = osp.join('tools', 'dataset_converters', 'ade20k2coco_panoptic.py')
CS_TOOL = osp.join('tools', 'dataset_converters', 'cityscapes2coco_panoptic.py')
SENTINEL = b'checkpoints someone cares about\n'


def run(args, env_root='unused/'):
    """Run a tool like tests.conftest.run_tool, but return the process whatever its code."""
    env = dict(os.environ, MMMAPS_SYNTHETIC_ROOT=env_root,
               PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')])))
    return subprocess.run([sys.executable] + args, cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def snapshot(path):
    """{relative path: sha256} of every file under ``path`` (or of ``path`` itself)."""
    if osp.isfile(path):
        with open(path, 'rb') as f:
            return {'.': hashlib.sha256(f.read()).hexdigest()}
    out = {}
    for folder, _, files in os.walk(path):
        for name in files:
            full = osp.join(folder, name)
            with open(full, 'rb') as f:
                out[osp.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def foreign_dir(path):
    """A folder of someone else's files; returns its snapshot."""
    os.makedirs(osp.join(path, 'logs'))
    with open(osp.join(path, 'sentinel.pth'), 'wb') as f:
        f.write(SENTINEL)
    with open(osp.join(path, 'logs', 'run.log'), 'wb') as f:
        f.write(SENTINEL * 2)
    before = snapshot(path)
    assert before['sentinel.pth'] == hashlib.sha256(SENTINEL).hexdigest()
    return before


def assert_refused(proc, path, *mentions):
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert path.rstrip('/') in output, output[-3000:]
    for text in mentions:
        assert text in output, output[-3000:]
    assert 'Traceback' not in output, output[-3000:]


def exits_refusing(main, args, path, *mentions):
    """The tool run in this process (cheaper than a subprocess) exits with a refusal."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    message = str(exc.value.code)
    assert exc.value.code not in (None, 0) and path.rstrip('/') in message, message
    for text in mentions:
        assert text in message, message


def no_leftovers(parent):
    """No staging or set-aside folders left beside an output."""
    return [n for n in os.listdir(parent) if n.startswith('.')]


# ---------------------------------------------------------------------------
# tools/build_memory.py
# ---------------------------------------------------------------------------
def memory_args(out, *extra):
    # the val query cache (4 images, key encoder only) is the cheapest memory to publish
    return ['tools/build_memory.py', MEMORY_CFG, '--split', 'val', '--query-cache-only',
            '--out', out, '--device', 'cpu', '--cfg-options', 'memory.build.num_workers=0',
            *extra]


@pytest.fixture(scope='module')
def published_memory(synthetic_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('published') / 'memory_val')
    proc = run(memory_args(out), synthetic_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_build_memory_refuses_a_foreign_folder(synthetic_root, tmp_path):
    out = str(tmp_path / 'work_dirs')
    before = foreign_dir(out)
    proc = run(memory_args(out), synthetic_root)
    assert_refused(proc, out, 'sentinel.pth', 'logs/', 'nothing was removed')
    assert snapshot(out) == before
    assert no_leftovers(str(tmp_path)) == []


def test_build_memory_force_never_replaces_what_it_did_not_write(
        synthetic_env, published_memory, tmp_path):
    from mmmaps.utils.output_dirs import OutputOwnershipError
    main = _tool(osp.join('tools', 'build_memory.py')).main
    out = str(tmp_path / 'work_dirs')
    before = foreign_dir(out)
    with pytest.raises(OutputOwnershipError, match='sentinel.pth'):
        main(memory_args(out, '--force')[1:])
    assert snapshot(out) == before
    weights = str(tmp_path / 'weights.pth')
    with open(weights, 'wb') as f:
        f.write(SENTINEL)
    with pytest.raises(OutputOwnershipError, match='is a file'):
        main(memory_args(weights, '--force')[1:])
    assert snapshot(weights) == {'.': hashlib.sha256(SENTINEL).hexdigest()}
    # a memory the user put their own file into is not only ours any more
    mixed = str(tmp_path / 'mixed')
    shutil.copytree(published_memory, mixed)
    with open(osp.join(mixed, 'notes.txt'), 'wb') as f:
        f.write(SENTINEL)
    before = snapshot(mixed)
    with pytest.raises(OutputOwnershipError, match='notes.txt'):
        main(memory_args(mixed, '--force')[1:])
    assert snapshot(mixed) == before and no_leftovers(str(tmp_path)) == []


def test_build_memory_replaces_its_own_memory_only_with_force(synthetic_root, published_memory,
                                                              tmp_path):
    out = str(tmp_path / 'memory_val')
    shutil.copytree(published_memory, out)
    before = snapshot(out)
    # another plan (chunk size) without --force: refused before any encoding
    changed = memory_args(out, 'memory.build.chunk_size=3')
    proc = run(changed, synthetic_root)
    assert_refused(proc, out, 'already holds a MAPS memory', '--force')
    assert snapshot(out) == before
    assert not osp.exists(out + '.build'), 'refused before preparing a build'
    proc = run(changed + ['--force'], synthetic_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(osp.join(out, 'manifest.json')) as f:
        assert json.load(f)['plan']['chunk_size'] == 3
    with open(osp.join(published_memory, 'manifest.json')) as f:
        assert json.load(f)['plan']['chunk_size'] != 3
    assert no_leftovers(str(tmp_path)) == []


def test_atomic_directory_refuses_a_foreign_folder_before_any_work(tmp_path):
    from mmmaps.memory.storage import atomic_directory
    from mmmaps.utils.output_dirs import OutputOwnershipError
    out = str(tmp_path / 'data')
    before = foreign_dir(out)
    with pytest.raises(OutputOwnershipError, match='sentinel.pth'):
        with atomic_directory(out):
            raise AssertionError('the body must not run')
    assert snapshot(out) == before and no_leftovers(str(tmp_path)) == []
    empty = str(tmp_path / 'empty')
    os.makedirs(empty)
    with atomic_directory(empty) as tmp:
        with open(osp.join(tmp, 'manifest.json'), 'w') as f:
            f.write('{}')
    assert os.listdir(empty) == ['manifest.json']


# ---------------------------------------------------------------------------
# tools/dataset_converters/make_synthetic_panoptic.py
# ---------------------------------------------------------------------------
def synthetic_args(out, num_train, *extra):
    return [SYNTHETIC_TOOL, '--out', out, '--num-train', str(num_train), '--num-val', '1',
            '--size', '32', '32', '--no-progress', *extra]


def test_synthetic_refuses_a_foreign_folder_even_with_force(tmp_path):
    out = str(tmp_path / 'data')
    before = foreign_dir(out)
    proc = run(synthetic_args(out, 2))
    assert_refused(proc, out, 'sentinel.pth', 'nothing was removed')
    assert snapshot(out) == before
    exits_refusing(_tool(SYNTHETIC_TOOL).main, synthetic_args(out, 2, '--force')[1:], out,
                   'sentinel.pth', 'logs/')
    assert snapshot(out) == before and no_leftovers(str(tmp_path)) == []


def test_synthetic_replaces_its_own_dataset_only_with_force(tmp_path):
    main = _tool(SYNTHETIC_TOOL).main
    out = str(tmp_path / 'synthetic')
    os.makedirs(out)  # an empty folder may be used
    main(synthetic_args(out, 2)[1:])
    before = snapshot(out)
    main(synthetic_args(out, 2)[1:])  # same parameters: reused
    assert snapshot(out) == before
    proc = run(synthetic_args(out, 3))
    assert_refused(proc, out, 'already holds a synthetic panoptic dataset', '--force')
    assert snapshot(out) == before
    main(synthetic_args(out, 3, '--force')[1:])
    with open(osp.join(out, 'synthetic_meta.json')) as f:
        assert json.load(f)['params']['num_train'] == 3
    assert len(os.listdir(osp.join(out, 'train'))) == 3
    # a file the user added makes it theirs: not replaced even with --force
    with open(osp.join(out, 'notes.txt'), 'wb') as f:
        f.write(SENTINEL)
    before = snapshot(out)
    exits_refusing(main, synthetic_args(out, 2, '--force')[1:], out, 'notes.txt')
    assert snapshot(out) == before and no_leftovers(str(tmp_path)) == []


# ---------------------------------------------------------------------------
# tools/dataset_converters/{ade20k,cityscapes}2coco_panoptic.py
# ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def native_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp('native')
    return dict(ade20k=(ADE_TOOL, make_ade20k(str(base / 'ADEChallengeData2016')),
                        'ade20k_panoptic_val'),
                cityscapes=(CS_TOOL, make_cityscapes(str(base / 'cityscapes')),
                            'cityscapes_panoptic_val'))


@pytest.mark.parametrize('which', ['ade20k', 'cityscapes'])
def test_converter_refuses_a_foreign_output_folder_even_with_force(native_roots, which, tmp_path):
    tool, root, png_dir = native_roots[which]
    out = str(tmp_path / 'out')
    target = osp.join(out, png_dir)
    before = foreign_dir(target)
    args = [tool, root, '--out', out, '--splits', 'val', '--no-progress']
    exits_refusing(_tool(tool).main, args[1:], target, 'already exist')
    assert snapshot(target) == before
    proc = run(args + ['--force'])
    assert_refused(proc, target, 'sentinel.pth', 'logs/', 'nothing was removed')
    assert snapshot(target) == before
    assert sorted(os.listdir(out)) == [png_dir], 'nothing published, no staging left'


@pytest.mark.parametrize('which', ['ade20k', 'cityscapes'])
def test_converter_replaces_its_own_outputs_only_with_force(native_roots, which, tmp_path):
    tool, root, png_dir = native_roots[which]
    out = str(tmp_path / 'out')
    args = [tool, root, '--out', out, '--splits', 'val', '--no-progress']
    main = _tool(tool).main
    main(args[1:])
    json_path = osp.join(out, png_dir + '.json')
    with open(json_path, 'rb') as f:
        reference = f.read()
    with open(json_path, 'w') as f:
        f.write('stale')  # so that a replacement is visible
    before = snapshot(out)
    exits_refusing(main, args[1:], json_path, 'already exist', '--force')
    assert snapshot(out) == before
    main(args[1:] + ['--force'])
    with open(json_path, 'rb') as f:
        assert f.read() == reference
    # a JSON of that name next to no marked PNG folder is someone else's
    shutil.rmtree(osp.join(out, png_dir))
    before = snapshot(out)
    exits_refusing(main, args[1:] + ['--force'], json_path, 'a file', 'nothing was removed')
    assert snapshot(out) == before


# ---------------------------------------------------------------------------
# tools/pretrain_encoder.py (writes one file, OUT, and its record OUT.json)
# ---------------------------------------------------------------------------
def test_pretrain_encoder_does_not_clobber_a_foreign_file(synthetic_root, tmp_path):
    out = str(tmp_path / 'model.pt')
    with open(out, 'wb') as f:
        f.write(SENTINEL)
    args = ['tools/pretrain_encoder.py', '--pool', osp.join(synthetic_root, 'train'), '--out',
            out, '--steps', '1', '--batch-size', '4', '--eval-ann', '']
    proc = run(args, synthetic_root)
    assert_refused(proc, out, '--force')
    assert snapshot(out) == {'.': hashlib.sha256(SENTINEL).hexdigest()}
    assert not osp.exists(out + '.json')
    folder = str(tmp_path / 'checkpoints')
    before = foreign_dir(folder)
    proc = run(args[:4] + [folder] + args[5:] + ['--force'], synthetic_root)
    assert_refused(proc, folder, 'folder')
    assert snapshot(folder) == before
