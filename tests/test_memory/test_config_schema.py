"""Every key of a config's ``memory`` section is known, or it is an error naming the key.

Issue 29: ``memory.retreival.k=3`` (a misspelt section) was silently ignored at build and test
time (only keys under ``memory.retrieval`` were checked), and an unknown encoder argument
ended in a bare TypeError of the class constructor.
"""
import os
import os.path as osp
import subprocess
import sys

import pytest

from tests.conftest import MEMORY_CFG, REPO_ROOT, load_config_with_root, tree_sha256

TINY_MAPS = osp.join(REPO_ROOT, 'configs', 'maps', 'maps_r18_synthetic-panoptic.py')

# (--cfg-options entry, the full key the error must name, a known key it must list)
UNKNOWN = [
    ('memory.retreival.k', 'memory.retreival', 'retrieval'),
    ('memory.index.ef_serch', 'memory.index.ef_serch', 'ef_search'),
    ('memory.build.chunksize', 'memory.build.chunksize', 'chunk_size'),
    ('memory.retrieval.topk', 'memory.retrieval.topk', 'max_objects'),
    ('memory.key_encoder.image_sise', 'memory.key_encoder.image_sise', 'image_size'),
    ('memory.dense_encoder.tile', 'memory.dense_encoder.tile', 'tile_size'),
]


@pytest.mark.parametrize('option,key,known', UNKNOWN)
def test_unknown_key_is_refused_where_the_memory_is_read(option, key, known, synthetic_root,
                                                         synthetic_memory):
    """train, test, demo and the audit read the memory through build_external_memory."""
    from mmmaps.memory import build_external_memory
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root, {'memory.root': synthetic_memory,
                                                             option: 3})
    before = tree_sha256(synthetic_memory)
    with pytest.raises(KeyError) as err:
        build_external_memory(cfg.memory, device='cpu')
    message = str(err.value)
    assert key in message and known in message, message
    assert '\n' not in message and not message.startswith("'"), message
    assert tree_sha256(synthetic_memory) == before


def test_misspelt_section_is_refused_by_build_memory(synthetic_root, tmp_path):
    """The tool exits with one line naming the key; nothing is written, no user file changes."""
    out = tmp_path / 'memory'
    before = tree_sha256(synthetic_root)
    env = dict(os.environ, MMMAPS_SYNTHETIC_ROOT=synthetic_root, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT,
                                                        os.environ.get('PYTHONPATH')])))
    proc = subprocess.run(
        [sys.executable, 'tools/build_memory.py', MEMORY_CFG, '--out', str(out),
         '--cfg-options', 'memory.retreival.k=3', 'memory.build.num_workers=0'],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('build_memory.py: error: memory.retreival is not a setting of '
                           'memory'), proc.stderr[-2000:]
    assert 'retrieval (how a query reads the memory)' in last
    assert not osp.exists(out) and not osp.exists(str(out) + '.build')
    assert tree_sha256(synthetic_root) == before


def test_export_refuses_before_any_work(synthetic_root, tmp_path):
    """The ONNX export reads memory.retrieval.k: a misspelt section is refused first (the
    checkpoint is not even opened)."""
    pytest.importorskip('onnxruntime')
    from mmmaps.deployment import export_onnx
    cfg = load_config_with_root(TINY_MAPS, synthetic_root)
    config = str(tmp_path / 'maps.py')
    cfg.merge_from_dict({'memory.retreival': dict(k=3)})
    cfg.dump(config)
    with pytest.raises(KeyError, match=r'memory\.retreival is not a setting of memory'):
        export_onnx(config, str(tmp_path / 'missing.pth'), str(tmp_path / 'export'),
                    shape=(64, 64), log=lambda m: None)
    assert not osp.exists(tmp_path / 'export')


def test_index_setting_of_another_type_says_so(synthetic_root, synthetic_memory):
    from mmmaps.memory.builder import memory_cfg_of
    cfg = load_config_with_root(MEMORY_CFG, synthetic_root)
    cfg.memory.index = dict(type='Flat', nprobe=8)
    with pytest.raises(KeyError) as err:
        memory_cfg_of(cfg)
    message = str(err.value)
    assert 'memory.index.nprobe' in message and 'a setting of type IVFPQ' in message, message
    assert '_delete_=True' in message

