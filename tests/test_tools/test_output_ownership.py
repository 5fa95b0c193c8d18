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

from tests.conftest import MEMORY_CFG, REPO_ROOT, tree_sha256
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


def foreign_dir(path):
    """A folder of someone else's files; returns its snapshot."""
    os.makedirs(osp.join(path, 'logs'))
    with open(osp.join(path, 'sentinel.pth'), 'wb') as f:
        f.write(SENTINEL)
    with open(osp.join(path, 'logs', 'run.log'), 'wb') as f:
        f.write(SENTINEL * 2)
    before = tree_sha256(path)
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
    assert tree_sha256(out) == before
    assert no_leftovers(str(tmp_path)) == []


def test_build_memory_force_never_replaces_what_it_did_not_write(
        synthetic_env, published_memory, tmp_path):
    from mmmaps.utils.output_dirs import OutputOwnershipError
    main = _tool(osp.join('tools', 'build_memory.py')).main
    out = str(tmp_path / 'work_dirs')
    before = foreign_dir(out)
    with pytest.raises(OutputOwnershipError, match='sentinel.pth'):
        main(memory_args(out, '--force')[1:])
    assert tree_sha256(out) == before
    weights = str(tmp_path / 'weights.pth')
    with open(weights, 'wb') as f:
        f.write(SENTINEL)
    with pytest.raises(OutputOwnershipError, match='is a file'):
        main(memory_args(weights, '--force')[1:])
    assert tree_sha256(weights) == {'.': hashlib.sha256(SENTINEL).hexdigest()}
    # a memory the user put their own file into is not only ours any more
    mixed = str(tmp_path / 'mixed')
    shutil.copytree(published_memory, mixed)
    with open(osp.join(mixed, 'notes.txt'), 'wb') as f:
        f.write(SENTINEL)
    before = tree_sha256(mixed)
    with pytest.raises(OutputOwnershipError, match='notes.txt'):
        main(memory_args(mixed, '--force')[1:])
    assert tree_sha256(mixed) == before and no_leftovers(str(tmp_path)) == []


def test_build_memory_replaces_its_own_memory_only_with_force(synthetic_root, published_memory,
                                                              tmp_path):
    out = str(tmp_path / 'memory_val')
    shutil.copytree(published_memory, out)
    before = tree_sha256(out)
    # another plan (chunk size) without --force: refused before any encoding
    changed = memory_args(out, 'memory.build.chunk_size=3')
    proc = run(changed, synthetic_root)
    assert_refused(proc, out, 'already holds a MAPS memory', '--force')
    assert tree_sha256(out) == before
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
    assert tree_sha256(out) == before and no_leftovers(str(tmp_path)) == []
    empty = str(tmp_path / 'empty')
    os.makedirs(empty)
    with atomic_directory(empty) as tmp:
        with open(osp.join(tmp, 'manifest.json'), 'w') as f:
            f.write('{}')
    assert sorted(os.listdir(empty)) == ['.mmmaps_output', 'manifest.json']
    with open(osp.join(empty, '.mmmaps_output')) as f:
        record = json.load(f)
    assert record['what'] == 'MAPS memory' and record['files'] == ['manifest.json']


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
    assert tree_sha256(out) == before
    exits_refusing(_tool(SYNTHETIC_TOOL).main, synthetic_args(out, 2, '--force')[1:], out,
                   'sentinel.pth', 'logs/')
    assert tree_sha256(out) == before and no_leftovers(str(tmp_path)) == []


def test_synthetic_replaces_its_own_dataset_only_with_force(tmp_path):
    main = _tool(SYNTHETIC_TOOL).main
    out = str(tmp_path / 'synthetic')
    os.makedirs(out)  # an empty folder may be used
    main(synthetic_args(out, 2)[1:])
    before = tree_sha256(out)
    main(synthetic_args(out, 2)[1:])  # same parameters: reused
    assert tree_sha256(out) == before
    proc = run(synthetic_args(out, 3))
    assert_refused(proc, out, 'already holds a synthetic panoptic dataset', '--force')
    assert tree_sha256(out) == before
    main(synthetic_args(out, 3, '--force')[1:])
    with open(osp.join(out, 'synthetic_meta.json')) as f:
        assert json.load(f)['params']['num_train'] == 3
    assert len(os.listdir(osp.join(out, 'train'))) == 3
    # a file the user added makes it theirs: not replaced even with --force
    with open(osp.join(out, 'notes.txt'), 'wb') as f:
        f.write(SENTINEL)
    before = tree_sha256(out)
    exits_refusing(main, synthetic_args(out, 2, '--force')[1:], out, 'notes.txt')
    assert tree_sha256(out) == before and no_leftovers(str(tmp_path)) == []


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
    assert tree_sha256(target) == before
    proc = run(args + ['--force'])
    assert_refused(proc, target, 'sentinel.pth', 'logs/', 'nothing was removed')
    assert tree_sha256(target) == before
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
    inode = os.stat(json_path).st_ino
    before = tree_sha256(out)
    exits_refusing(main, args[1:], json_path, 'already exist', '--force')
    assert tree_sha256(out) == before
    main(args[1:] + ['--force'])
    with open(json_path, 'rb') as f:
        assert f.read() == reference
    assert os.stat(json_path).st_ino != inode, 'replaced by the new conversion'
    # a JSON of that name next to no marked PNG folder is someone else's
    shutil.rmtree(osp.join(out, png_dir))
    before = tree_sha256(out)
    exits_refusing(main, args[1:] + ['--force'], json_path, 'a file', 'nothing was removed')
    assert tree_sha256(out) == before


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
    assert tree_sha256(out) == {'.': hashlib.sha256(SENTINEL).hexdigest()}
    assert not osp.exists(out + '.json')
    folder = str(tmp_path / 'checkpoints')
    before = foreign_dir(folder)
    proc = run(args[:4] + [folder] + args[5:] + ['--force'], synthetic_root)
    assert_refused(proc, folder, 'folder')
    assert tree_sha256(folder) == before


# ---------------------------------------------------------------------------
# issue 29: ownership at any depth, edited files, outputs without a record, umask
# ---------------------------------------------------------------------------
def add_user_file(path, content=SENTINEL):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(content)


def test_synthetic_force_refuses_files_added_at_any_depth(tmp_path):
    main = _tool(SYNTHETIC_TOOL).main
    out = str(tmp_path / 'synthetic')
    main(synthetic_args(out, 2)[1:])
    add_user_file(osp.join(out, 'train', 'extra', 'keep.txt'))
    add_user_file(osp.join(out, 'annotations', 'my_eval.json'), b'{"mine": 1}')
    before = tree_sha256(out)
    exits_refusing(main, synthetic_args(out, 3, '--force')[1:], out,
                   'annotations/my_eval.json', 'train/extra/', 'train/extra/keep.txt',
                   'nothing was removed')
    assert tree_sha256(out) == before and no_leftovers(str(tmp_path)) == []


def test_synthetic_output_gets_the_users_umask(tmp_path):
    main = _tool(SYNTHETIC_TOOL).main
    out = str(tmp_path / 'synthetic')
    previous = os.umask(0o027)
    try:
        main(synthetic_args(out, 2)[1:])
    finally:
        os.umask(previous)
    assert os.stat(out).st_mode & 0o777 == 0o750  # mkdtemp alone gives 0o700
    assert os.stat(osp.join(out, 'train')).st_mode & 0o777 == 0o750


def test_build_memory_force_refuses_files_added_at_any_depth(synthetic_env, published_memory,
                                                             tmp_path):
    from mmmaps.utils.output_dirs import OutputOwnershipError
    main = _tool(osp.join('tools', 'build_memory.py')).main
    mixed = str(tmp_path / 'memory')
    shutil.copytree(published_memory, mixed)
    add_user_file(osp.join(mixed, 'query_cache', 'notes', 'keep2.txt'))
    before = tree_sha256(mixed)
    with pytest.raises(OutputOwnershipError, match='query_cache/notes/keep2.txt'):
        main(memory_args(mixed, '--force')[1:])
    assert tree_sha256(mixed) == before and no_leftovers(str(tmp_path)) == []


def test_an_output_without_its_record_is_refused(synthetic_env, published_memory, tmp_path):
    """An output of an mmmaps older than the record lists no files: nothing tells the tool's
    files from the user's, so --force refuses it rather than guess."""
    from mmmaps.utils.output_dirs import OutputOwnershipError
    main = _tool(osp.join('tools', 'build_memory.py')).main
    legacy = str(tmp_path / 'memory')
    shutil.copytree(published_memory, legacy)
    os.remove(osp.join(legacy, '.mmmaps_output'))
    before = tree_sha256(legacy)
    with pytest.raises(OutputOwnershipError, match='older mmmaps'):
        main(memory_args(legacy, '--force')[1:])
    assert tree_sha256(legacy) == before


@pytest.mark.parametrize('which', ['ade20k', 'cityscapes'])
@pytest.mark.parametrize('depth', ['top', 'subfolder'])
def test_converter_force_refuses_a_user_file_in_its_png_folder(native_roots, which, depth,
                                                               tmp_path):
    tool, root, png_dir = native_roots[which]
    out = str(tmp_path / 'out')
    args = [tool, root, '--out', out, '--splits', 'val', '--no-progress']
    main = _tool(tool).main
    main(args[1:])
    png_root = osp.join(out, png_dir)
    sub = next((n for n in sorted(os.listdir(png_root))
                if osp.isdir(osp.join(png_root, n))), None)
    if depth == 'subfolder':
        if sub is None:  # ADE20K's PNGs are flat: the user made a folder of their own
            sub = 'mine'
        user_file = osp.join(sub, 'keep.txt')
    else:
        user_file = 'keep.txt'
    add_user_file(osp.join(png_root, user_file))
    before = tree_sha256(out)
    exits_refusing(main, args[1:] + ['--force'], png_root, user_file, 'nothing was removed')
    assert tree_sha256(out) == before


@pytest.fixture(scope='module')
def tiny_m2f_checkpoint(synthetic_root, tmp_path_factory):
    from tests.conftest import TINY_M2F, run_tool
    ckpt = str(tmp_path_factory.mktemp('ckpt') / 'init.pth')
    run_tool(['tools/misc/init_checkpoint.py', TINY_M2F, ckpt], synthetic_root)
    return ckpt


def panoptic_out_args(ckpt, prefix, work, *extra):
    from tests.conftest import TINY_M2F
    return ['tools/test.py', TINY_M2F, ckpt, '--work-dir', work, '--panoptic-out', prefix,
            *extra, '--cfg-options', 'test_dataloader.num_workers=0',
            'test_dataloader.persistent_workers=False']


def test_panoptic_out_never_replaces_what_it_did_not_write(synthetic_root, tiny_m2f_checkpoint,
                                                           tmp_path):
    work, prefix = str(tmp_path / 'work'), str(tmp_path / 'pred' / 'results')
    # a JSON of the user's at PREFIX.panoptic.json
    add_user_file(prefix + '.panoptic.json', b'{"mine": 1}')
    before = tree_sha256(str(tmp_path / 'pred'))
    for extra, says in (((), 'already exist'), (('--force', ), 'nothing was removed')):
        proc = run(panoptic_out_args(tiny_m2f_checkpoint, prefix, work, *extra), synthetic_root)
        assert_refused(proc, prefix + '.panoptic.json', says)
        assert tree_sha256(str(tmp_path / 'pred')) == before
    # a non-empty folder of the user's at PREFIX.panoptic/
    os.remove(prefix + '.panoptic.json')
    add_user_file(osp.join(prefix + '.panoptic', '000001.png'), SENTINEL)
    before = tree_sha256(str(tmp_path / 'pred'))
    proc = run(panoptic_out_args(tiny_m2f_checkpoint, prefix, work, '--force'), synthetic_root)
    assert_refused(proc, prefix + '.panoptic', 'nothing was removed')
    assert tree_sha256(str(tmp_path / 'pred')) == before


def test_panoptic_out_replaces_its_own_files_only_with_force(synthetic_root, tiny_m2f_checkpoint,
                                                             tmp_path):
    work, prefix = str(tmp_path / 'work'), str(tmp_path / 'pred' / 'results')
    args = panoptic_out_args(tiny_m2f_checkpoint, prefix, work)
    proc = run(args, synthetic_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(prefix + '.panoptic.json') as f:
        written = {a['file_name'] for a in json.load(f)['annotations']}
    assert written and written <= set(os.listdir(prefix + '.panoptic'))
    before = tree_sha256(str(tmp_path / 'pred'))
    proc = run(args, synthetic_root)  # again without --force
    assert_refused(proc, prefix + '.panoptic.json', '--force')
    assert tree_sha256(str(tmp_path / 'pred')) == before
    add_user_file(osp.join(prefix + '.panoptic', 'notes', 'keep.txt'))
    before = tree_sha256(str(tmp_path / 'pred'))
    proc = run(args[:7] + ['--force'] + args[7:], synthetic_root)
    assert_refused(proc, prefix + '.panoptic', 'notes/keep.txt')
    assert tree_sha256(str(tmp_path / 'pred')) == before
    shutil.rmtree(osp.join(prefix + '.panoptic', 'notes'))
    inode = os.stat(prefix + '.panoptic.json').st_ino
    proc = run(args[:7] + ['--force'] + args[7:], synthetic_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.stat(prefix + '.panoptic.json').st_ino != inode


def test_pretrain_encoder_force_never_replaces_a_foreign_file(synthetic_root, tmp_path):
    """README: --out that is not this tool's checkpoint is refused even with --force."""
    out = str(tmp_path / 'model.pt')
    add_user_file(out)
    args = ['tools/pretrain_encoder.py', '--pool', osp.join(synthetic_root, 'train'), '--out',
            out, '--steps', '1', '--batch-size', '4', '--eval-ann', '', '--force']
    proc = run(args, synthetic_root)
    assert_refused(proc, out, 'even with --force')
    assert tree_sha256(out) == {'.': hashlib.sha256(SENTINEL).hexdigest()}
    assert not osp.exists(out + '.json')
