"""Issue 16 (reliability): manifest schema checks before mapping, incompatible memory at test
time is an error, one state per build (checksums, damaged chunks, locks, leftovers)."""
import importlib.util
import json
import os
import os.path as osp
import shutil
import socket
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest

from mmdet.registry import HOOKS

from mmmaps.memory import MemoryBankError, MemoryRoot
from mmmaps.memory import builder as builder_module
from mmmaps.memory.builder import BuildLock, MemoryBuildError

from ..conftest import MEMORY_CFG, REPO_ROOT, load_config_with_root, tree_sha256
from .test_build_memory import bank_digest, make_builder
from .test_memory_hook import MemoryModel, make_runner


TINY_MAPS = osp.join(REPO_ROOT, 'configs', 'maps', 'maps_r18_synthetic-panoptic.py')


@pytest.fixture
def memory_copy(synthetic_memory, tmp_path):
    """A private copy of the session memory (tests damage it); the original is checked
    unaltered afterwards."""
    before = tree_sha256(synthetic_memory)
    out = str(tmp_path / 'memory')
    shutil.copytree(synthetic_memory, out)
    yield out
    assert tree_sha256(synthetic_memory) == before


def edit_json(path, change):
    with open(path) as f:
        data = json.load(f)
    change(data)
    with open(path, 'w') as f:
        json.dump(data, f)


def run_tool_rc(args, env_root):
    path = os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')]))
    env = dict(os.environ, MMMAPS_SYNTHETIC_ROOT=env_root, OMP_NUM_THREADS='1', PYTHONPATH=path)
    return subprocess.run([sys.executable] + args, cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


# ------------------------------------------------------------------ (3) manifest schema
def test_manifest_schema_rejects_paths_outside_the_memory(memory_copy):
    MemoryRoot(memory_copy)  # the untouched copy loads (the checks below can fail)
    scene = osp.join(memory_copy, 'scene', 'manifest.json')
    pristine = open(scene).read()
    for name in ('../../etc/passwd', '/etc/passwd', 'sub/../../x.npy'):
        edit_json(scene, lambda m: m['files'].update({name: dict(bytes=1, sha256='0' * 64)}))
        with pytest.raises(MemoryBankError) as err:
            MemoryRoot(memory_copy)
        assert scene in str(err.value) and f"'files.{name}'" in str(err.value), err.value
        assert 'relative path inside' in str(err.value)
        open(scene, 'w').write(pristine)
    root = osp.join(memory_copy, 'manifest.json')
    edit_json(root, lambda m: m['banks'].update(scene='../../etc'))
    with pytest.raises(MemoryBankError, match=r"manifest.json: field 'banks.scene' must be a "
                       r"relative path inside .*'../../etc'"):
        MemoryRoot(memory_copy)
    edit_json(root, lambda m: m['banks'].update(scene='scene'))
    os.symlink('/etc', osp.join(memory_copy, 'escape'))
    edit_json(root, lambda m: m.update(query_cache='escape'))
    with pytest.raises(MemoryBankError, match="field 'query_cache' 'escape' leads outside"):
        MemoryRoot(memory_copy)


def test_manifest_counts_and_dtype_are_checked_against_file_sizes(memory_copy):
    obj = osp.join(memory_copy, 'object', 'manifest.json')
    manifest = json.load(open(obj))
    # independent reference: values.bin holds num_values x value_dim float16
    assert (os.path.getsize(osp.join(memory_copy, 'object', 'values.bin'))
            == manifest['num_values'] * manifest['value_dim'] * 2)
    pristine = open(obj).read()
    for change, field in ((dict(num_values=10 ** 7), 'num_values'),
                          (dict(value_dtype='float32'), 'num_values'),
                          (dict(value_dtype='complex128'), 'value_dtype'),
                          (dict(num_entries=10 ** 6), 'num_entries/key_dim'),
                          (dict(key_dim=512), 'num_entries/key_dim')):
        edit_json(obj, lambda m: m.update(change))
        with pytest.raises(MemoryBankError) as err:
            MemoryRoot(memory_copy)
        text = str(err.value)
        assert obj in text and f"field '{field}'" in text, (change, text)
        assert 'mmap length' not in text
        open(obj, 'w').write(pristine)
    # the same shape with another dtype in the .npy, its manifest record updated to match
    keys_path = osp.join(memory_copy, 'scene', 'keys.npy')
    np.save(keys_path, np.load(keys_path).astype(np.float64))
    scene = osp.join(memory_copy, 'scene', 'manifest.json')
    edit_json(scene, lambda m: m['files']['keys.npy'].update(
        bytes=os.path.getsize(keys_path), sha256=tree_sha256(osp.dirname(keys_path))['keys.npy']))
    with pytest.raises(MemoryBankError, match=r"scene/manifest.json: field 'num_entries/key_dim' "
                       r'says \(8, 384\) float32, but .*keys.npy holds \(8, 384\) float64'):
        MemoryRoot(memory_copy)


@pytest.mark.parametrize('change,field', [
    (lambda m: m.update(num_entries='8'), 'num_entries'),
    (lambda m: m.update(key_dim=-1), 'key_dim'),
    (lambda m: m.pop('index'), 'index'),
    (lambda m: m.update(files=[]), 'files'),
    (lambda m: m['files']['keys.npy'].pop('sha256'), 'files.keys.npy.sha256'),
    (lambda m: m['files'].pop('offsets.npy'), 'files'),
    (lambda m: m.update(extra_fields=['areas']), 'extra_fields'),
])
def test_malformed_bank_manifest_names_manifest_and_field(memory_copy, change, field):
    obj = osp.join(memory_copy, 'object', 'manifest.json')
    edit_json(obj, change)
    with pytest.raises(MemoryBankError) as err:  # not a KeyError/TypeError/AttributeError
        MemoryRoot(memory_copy)
    assert f"{obj}: field '{field}'" in str(err.value), err.value


def test_malformed_root_and_cache_manifests(memory_copy):
    root = osp.join(memory_copy, 'manifest.json')
    pristine = open(root).read()
    open(root, 'w').write('[1, 2]')
    with pytest.raises(MemoryBankError, match=f'{root}: a manifest must be a JSON object'):
        MemoryRoot(memory_copy)
    open(root, 'w').write(pristine)
    edit_json(root, lambda m: m.update(banks='scene'))
    with pytest.raises(MemoryBankError, match=f"{root}: field 'banks'"):
        MemoryRoot(memory_copy)
    open(root, 'w').write(pristine)
    cache = osp.join(memory_copy, 'query_cache', 'manifest.json')
    edit_json(cache, lambda m: m.update(dim=4))
    with pytest.raises(MemoryBankError, match=f"{cache}: field 'num_entries/dim'"):
        MemoryRoot(memory_copy)


# ------------------------------------------------------------------ (5) incompatible memory
def load_test_tool():
    spec = importlib.util.spec_from_file_location('mmmaps_test_tool_rel',
                                                  osp.join(REPO_ROOT, 'tools', 'test.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_incompatible_memory_at_test_time_is_an_error(synthetic_root, synthetic_memory, caplog):
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root, {'memory.root': synthetic_memory})
    hook = HOOKS.build(dict(type='MemoryHook'))
    runner = make_runner(cfg, MemoryModel())
    hook.before_run(runner)
    checkpoint = dict(meta={})
    hook.before_save_checkpoint(runner, checkpoint)
    # trained with another dense encoder (and so another manifest)
    other = json.loads(json.dumps(checkpoint))
    other['meta']['memory']['dense_encoder']['weights_sha256'] = 'e' * 64
    other['meta']['memory']['manifest_sha256'] = 'f' * 64
    with pytest.raises(MemoryBankError, match=r'incompatible memory: .*differs in dense encoder '
                       r'weights_sha256: trained .eeee.*--allow-incompatible-memory'):
        hook.after_load_checkpoint(runner, other)
    # a compatible, different memory stays a warning; the explicit override warns too
    compatible = json.loads(json.dumps(checkpoint))
    compatible['meta']['memory']['manifest_sha256'] = 'f' * 64
    with pytest.warns(UserWarning, match='MEMORY MISMATCH'):
        hook.after_load_checkpoint(runner, compatible)
    allowed = HOOKS.build(dict(type='MemoryHook', allow_incompatible_memory=True))
    allowed.memory = hook.memory
    with pytest.warns(UserWarning, match='INCOMPATIBLE: dense encoder weights_sha256'):
        allowed.after_load_checkpoint(runner, other)


def test_test_tool_flag_sets_the_hook_override(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv('MMMAPS_SYNTHETIC_ROOT', synthetic_root)
    tool = load_test_tool()
    ckpt = tmp_path / 'fake.pth'
    ckpt.write_bytes(b'')
    seen = {}

    def fake_runner(cfg):
        seen['hooks'] = [dict(h) for h in cfg.custom_hooks if 'MemoryHook' in str(h['type'])]
        raise RuntimeError('stop here')

    from mmmaps.engine import MMMapsRunner
    with mock.patch.object(MMMapsRunner, 'from_cfg', side_effect=fake_runner):
        for flag, expected in (([], None), (['--allow-incompatible-memory'], True)):
            with pytest.raises(RuntimeError, match='stop here'):
                tool.main([TINY_MAPS, str(ckpt), '--work-dir', str(tmp_path / 'w')] + flag)
            assert seen['hooks'] and all(h.get('allow_incompatible_memory') is expected
                                         for h in seen['hooks']), seen
    m2f = osp.join(REPO_ROOT, 'configs', 'mask2former', 'mask2former_r18_synthetic-panoptic.py')
    with pytest.raises(ValueError, match='--allow-incompatible-memory needs a MAPS config'):
        tool.main([m2f, str(ckpt), '--allow-incompatible-memory'])


# ------------------------------------------------------------------ (4) one state per build
def test_damaged_memory_is_not_up_to_date(synthetic_root, memory_copy):
    builder = make_builder(synthetic_root, memory_copy)
    assert builder.is_up_to_date()  # reference: the intact copy is
    values = osp.join(memory_copy, 'object', 'values.bin')
    with open(values, 'r+b') as f:  # same size, one byte flipped
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    with pytest.raises(MemoryBankError, match='values.bin does not match the sha256'):
        MemoryRoot(memory_copy)  # what the hook says
    assert not builder.is_up_to_date()  # and the builder agrees


def test_corrupt_chunk_is_named_and_reencoded_on_resume(synthetic_root, synthetic_memory,
                                                        tmp_path):
    out = tmp_path / 'resumed'
    first = make_builder(synthetic_root, out)
    first.prepare(resume=False, force=False)
    first.encode_chunks(progress=False)
    assert first.done_chunks() == [0, 1, 2]
    chunk = first._chunk_path(0)
    size = osp.getsize(chunk)
    with open(chunk, 'r+b') as f:
        f.truncate(size // 2)
    again = make_builder(synthetic_root, out)
    with pytest.raises(MemoryBuildError, match=f'chunk {chunk} is damaged'):
        again.merge()
    assert not osp.exists(out)
    bad = again.check_chunks()
    assert len(bad) == 1 and bad[0].startswith(chunk), bad
    assert again.done_chunks() == [1, 2]
    again.prepare(resume=True, force=False)
    again.encode_chunks(progress=False)
    again.merge()
    for bank in ('scene', 'object'):
        assert bank_digest(osp.join(out, bank)) == bank_digest(osp.join(synthetic_memory, bank))


def test_chunk_temporary_names_are_unique_per_process(synthetic_root, tmp_path):
    builder = make_builder(synthetic_root, tmp_path / 'tmpnames')
    builder.prepare(resume=False, force=False)
    names = []
    real = np.savez

    def spy(path, **arrays):
        names.append(path)
        return real(path, **arrays)

    with mock.patch.object(builder_module.np, 'savez', side_effect=spy):
        builder.encode_chunks(progress=False, max_chunks=1)
    assert len(names) == 1 and f'{socket.gethostname()}-{os.getpid()}' in names[0], names
    assert os.listdir(osp.dirname(names[0])) == ['chunk-000000.npz']


def dead_pid():
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


def test_build_lock_refuses_a_live_owner_and_takes_over_a_stale_one(tmp_path):
    path = str(tmp_path / 'memory.lock')
    live = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        with open(path, 'w') as f:
            json.dump(dict(pid=live.pid, host=socket.gethostname(), started='t'), f)
        owner = f'pid {live.pid} on {socket.gethostname()} '
        with pytest.raises(MemoryBuildError, match=owner + rf'\(started t, lock {path}\)'):
            BuildLock(path).acquire()
        with open(path, 'w') as f:
            json.dump(dict(pid=dead_pid(), host=socket.gethostname(), started='t'), f)
        with BuildLock(path):
            assert json.load(open(path))['pid'] == os.getpid()
        assert not osp.exists(path)
        with open(path, 'w') as f:
            json.dump(dict(pid=1, host='elsewhere', started='t'), f)
        with pytest.raises(MemoryBuildError, match=f'on elsewhere .*delete {path} if it is gone'):
            BuildLock(path).acquire()
    finally:
        live.kill()
        live.wait()


def test_second_build_refuses_and_published_memory_is_unaltered(synthetic_root, memory_copy):
    before = tree_sha256(memory_copy)
    live = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
    try:
        with open(memory_copy + '.lock', 'w') as f:
            json.dump(dict(pid=live.pid, host=socket.gethostname(), started='t'), f)
        proc = run_tool_rc(['tools/build_memory.py', MEMORY_CFG, '--out', memory_copy,
                            '--device', 'cpu', '--force', '--cfg-options',
                            'memory.build.num_workers=0'], synthetic_root)
    finally:
        live.kill()
        live.wait()
    assert proc.returncode != 0
    assert f'another build of {memory_copy} is running: pid {live.pid}' in proc.stderr, \
        proc.stderr[-2000:]
    assert tree_sha256(memory_copy) == before


def test_leftovers_of_killed_runs_are_cleaned(synthetic_root, memory_copy):
    parent, base = osp.dirname(memory_copy), osp.basename(memory_copy)
    builder = make_builder(synthetic_root, memory_copy)
    builder.prepare(resume=False, force=False)  # a partial build (plan.json) of this plan
    partial = osp.join(parent, f'.{base}.partial-abc123')
    old = osp.join(parent, f'.{base}.old-xyz')
    other = osp.join(parent, '.unrelated.partial-1')  # another memory's: not touched
    for folder in (partial, old, other):
        os.makedirs(folder)
    chunks = osp.join(builder.build_dir, 'chunks')
    host = socket.gethostname()
    dead_tmp = osp.join(chunks, f'chunk-000000.npz.{host}-{dead_pid()}.tmp.npz')
    elsewhere = osp.join(chunks, 'chunk-000001.npz.otherhost-1.tmp.npz')  # a remote shard's
    live_here = osp.join(chunks, f'chunk-000002.npz.{host}-{os.getpid()}.tmp.npz')
    for path in (dead_tmp, elsewhere, live_here):
        open(path, 'wb').write(b'x')
    before = tree_sha256(memory_copy)
    assert sorted(builder.clean_leftovers()) == sorted([partial, old, dead_tmp])
    assert sorted(os.listdir(parent)) == sorted(['.unrelated.partial-1', base, base + '.build'])
    assert sorted(os.listdir(chunks)) == sorted(map(osp.basename, (elsewhere, live_here)))
    assert tree_sha256(memory_copy) == before
    # the partial build stays for --resume unless the published memory is intact and has
    # its plan (a merge killed while removing it)
    assert builder.clean_leftovers(published_intact=True) == [builder.build_dir]
    assert not osp.exists(builder.build_dir)
    # a .build/ without a plan is useless
    os.makedirs(chunks)
    assert builder.clean_leftovers() == [builder.build_dir]
    assert tree_sha256(memory_copy) == before


def test_tool_rebuilds_a_damaged_memory(synthetic_root, memory_copy):
    args = ['tools/build_memory.py', MEMORY_CFG, '--out', memory_copy, '--device', 'cpu',
            '--cfg-options', 'memory.build.num_workers=0', 'memory.build.chunk_size=3']
    proc = run_tool_rc(args, synthetic_root)  # reference: the intact copy is up to date
    assert 'is up to date' in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    index = osp.join(memory_copy, 'scene', 'offsets.npy')
    with open(index, 'r+b') as f:
        f.seek(-1, 2)
        f.write(b'\x7f')
    proc = run_tool_rc(args, synthetic_root)
    text = proc.stdout + proc.stderr
    assert 'is up to date' not in text and f'{memory_copy} is damaged' in text, text[-3000:]
    assert 'offsets.npy' in text
    if proc.returncode != 0:  # replacing a published memory may need --force (publish rules)
        assert '--force' in text, text[-3000:]
        proc = run_tool_rc(args + ['--force'], synthetic_root)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    MemoryRoot(memory_copy)  # intact again
    assert not osp.exists(memory_copy + '.lock')
