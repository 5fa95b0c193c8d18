"""deploy.json carries a checksum of its own, verified before the runtime trusts any field.

Issue 29: an edited ``deploy.json`` (e.g. another input shape) ended in a bare onnxruntime shape
error; deploy.json had no checksum of its own (only the files it lists had one).
"""
import hashlib
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, load_config_with_root

pytest.importorskip('onnxruntime')

TINY_M2F = 'configs/mask2former/mask2former_r18_synthetic-panoptic.py'


def _sha256_tree(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(osp.join(folder, name), 'rb') as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def _canonical_sha256(info):
    """Independent reference: sha256 of the JSON without its own checksum, sorted keys, no
    whitespace."""
    body = {k: v for k, v in info.items() if k != 'deploy_sha256'}
    return hashlib.sha256(json.dumps(body, sort_keys=True,
                                     separators=(',', ':')).encode()).hexdigest()


@pytest.fixture(scope='module')
def export(synthetic_root, tmp_path_factory):
    """A random-init tiny Mask2Former exported at 64x64 (fixed shape)."""
    import torch

    from mmmaps.deployment import export_onnx
    from mmmaps.deployment.export import build_model_from_config
    folder = tmp_path_factory.mktemp('deploy_checksum')
    cfg = load_config_with_root(osp.join(REPO_ROOT, TINY_M2F), synthetic_root)
    torch.manual_seed(0)
    model = build_model_from_config(cfg)
    model.init_weights()
    ckpt = str(folder / 'm2f.pth')
    torch.save(dict(state_dict=model.state_dict(), meta={}), ckpt)
    out = str(folder / 'export')
    export_onnx(cfg.filename, ckpt, out, shape=(64, 64), log=lambda m: None)
    return out, ckpt, cfg


def _copy(export, tmp_path):
    copy = str(tmp_path / 'export')
    shutil.copytree(export, copy)
    return copy


def _rewrite(folder, edit):
    path = osp.join(folder, 'deploy.json')
    with open(path) as f:
        info = json.load(f)
    edit(info)
    with open(path, 'w') as f:
        json.dump(info, f, indent=2)
    return path


def test_export_records_a_checksum_of_deploy_json(export, tmp_path):
    from mmmaps.deployment import read_export
    folder, _, _ = export
    with open(osp.join(folder, 'deploy.json')) as f:
        info = json.load(f)
    assert info['deploy_sha256'] == _canonical_sha256(info)
    # the checksum covers the content, not the layout: a re-indented copy still loads
    copy = _copy(folder, tmp_path)
    with open(osp.join(copy, 'deploy.json'), 'w') as f:
        json.dump(info, f, indent=None, sort_keys=True)
    assert read_export(copy) == info


def test_edited_deploy_json_is_refused_by_the_demo(export, tmp_path, synthetic_root):
    """onnx_demo.py exits with one line naming deploy.json and the re-export command; no
    file of the export or of the dataset changes, no output is written."""
    folder, ckpt, cfg = export
    copy = _copy(folder, tmp_path)
    path = _rewrite(copy, lambda info: info['inputs'][0].update(shape=[1, 3, 96, 64]))
    before = _sha256_tree(copy)
    image = osp.join(synthetic_root, 'val', sorted(os.listdir(osp.join(synthetic_root,
                                                                       'val')))[0])
    env = dict(os.environ, MMMAPS_SYNTHETIC_ROOT=synthetic_root, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT,
                                                        os.environ.get('PYTHONPATH')])))
    out = tmp_path / 'vis.png'
    proc = subprocess.run([sys.executable, 'tools/deployment/onnx_demo.py', image, copy,
                           '--out-file', str(out)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f'onnx_demo.py: error: {path} was changed after the export'), last
    assert 'deploy_sha256' in last
    assert f'tools/deployment/export_onnx.py {cfg.filename} {ckpt} --out {copy}' in last, last
    assert last.endswith('--force'), last
    assert _sha256_tree(copy) == before
    assert not out.exists()


def test_edited_deploy_json_is_refused_by_the_runtime(export, tmp_path):
    from mmmaps.deployment import DeploymentError, onnx_model_config
    folder, _, cfg = export
    copy = _copy(folder, tmp_path)
    path = _rewrite(copy, lambda info: info.update(mask_stride=info['mask_stride'] * 2))
    before = _sha256_tree(copy)
    with pytest.raises(DeploymentError) as err:
        onnx_model_config(cfg, copy)
    assert str(err.value).startswith(f'{path} was changed after the export')
    assert _sha256_tree(copy) == before


def test_export_without_a_checksum_is_refused_naming_the_command(export, tmp_path):
    """An export of the previous format (version 1, no deploy_sha256) cannot be told from an
    edited one: refused, naming the command that writes it again."""
    from mmmaps.deployment import DeploymentError, read_export

    def old_format(info):
        info.pop('deploy_sha256', None)
        info['format_version'] = 1

    folder, ckpt, cfg = export
    copy = _copy(folder, tmp_path)
    path = _rewrite(copy, old_format)
    before = _sha256_tree(copy)
    with pytest.raises(DeploymentError) as err:
        read_export(copy)
    message = str(err.value)
    assert message.startswith(f'{path}: an export of an older mmmaps (format version 1)')
    assert message.endswith(f'python tools/deployment/export_onnx.py {cfg.filename} {ckpt} '
                            f'--out {copy} --shape 64 64 --force'), message
    assert _sha256_tree(copy) == before
