"""tools/gpu_acceptance.sh --dry-run: the GPU acceptance script's code paths on the CPU."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.timeout(900)
def test_gpu_acceptance_dry_run(tmp_path):
    out = tmp_path / 'report'
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='2')
    env.pop('OUT', None)
    proc = subprocess.run(['bash', 'tools/gpu_acceptance.sh', '--dry-run', '--out', str(out)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    with open(out / 'gpu_acceptance.json') as f:
        report = json.load(f)
    sections = report['sections']
    assert report['dry_run'] is True
    status = {name: entry['status'] for name, entry in sections.items()}
    assert status == dict(environment='ok', msda='ok', memory_build='ok', models='ok',
                          retrieval='ok', deployment='ok', ddp='skipped'), status
    # the bf16 PyTorch path agrees with the float32 one to bf16 precision (an autocast or
    # dtype bug in the harness shows up as an error row or an O(1) difference)
    bf16 = [r for r in sections['msda']['result']['rows'] if r['dtype'] == 'bfloat16 autocast']
    assert bf16 and 'error' not in bf16[0]
    assert float(bf16[0]['output rel']) < 0.05
    models = {r['model']: r for r in sections['models']['result']['rows']}
    assert set(models) == {'mask2former', 'maps, keys from the model input',
                           'maps, full-image cache', 'panoptic_segformer'}
    for row in models.values():
        times = [v for k, v in row.items() if k.startswith(('train step', 'inference'))]
        assert len(times) == 2 and all(t > 0 for t in times), row
    assert set(sections['models']['result']['ratios']) == {
        'maps, keys from the model input / Mask2Former', 'maps, full-image cache / Mask2Former'}
    assert sections['memory_build']['result']['images_per_second'] > 0
    # HNSW against exact top-5 by matrix product: clustered 2k keys are easy for HNSW
    hnsw = sections['retrieval']['result']['rows'][0]
    assert hnsw['index'].startswith('HNSW') and hnsw['recall@5'] >= 0.95
    assert 'no faiss-gpu row' in sections['retrieval']['result']['faiss_gpu']
    # each family exported and run in onnxruntime: the same outputs as PyTorch on the CPU
    # (a wrong graph or wrong feed order is far over 1e-3), both timed
    deploy = {r['family']: r for r in sections['deployment']['result']['rows']}
    assert set(deploy) == {'mask2former', 'maps', 'panoptic_segformer'}
    for row in deploy.values():
        assert row['onnxruntime CPU ms/img'] > 0 and row['PyTorch CPU ms/img'] > 0, row
        assert float(row['onnxruntime CPU max |diff|']) < 1e-3, row
    markdown = (out / 'gpu_acceptance.md').read_text()
    assert '## models: ok' in markdown and '| maps, keys from the model input |' in markdown


def test_setup_env_knows_its_torch_lines(tmp_path):
    env = dict(os.environ, MMMAPS_CACHE=str(tmp_path))
    env.pop('MMMAPS_VENV', None)

    def venv(*args):
        return subprocess.run(['bash', 'tools/setup_env.sh', *args, '--print-venv'],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert venv().stdout.strip() == osp.join(str(tmp_path), 'venv')
    assert venv('--torch', '2.11').stdout.strip() == osp.join(str(tmp_path),
                                                              'venv-torch2.11-py3.12')
    assert venv('--torch', '2.5', '--python', '3.12').stdout.strip() == osp.join(
        str(tmp_path), 'venv-torch2.5-py3.12')
    wrong = venv('--torch', '2.7')
    assert wrong.returncode == 2 and "unknown torch line '2.7'" in wrong.stderr
    assert not os.listdir(tmp_path)  # --print-venv installs nothing


def test_a_section_failing_in_part_keeps_what_it_measured(tmp_path):
    """The models section of the first H200 run lost Mask2Former's and MAPS's numbers to
    Panoptic SegFormer's failure; a family's failure is now its row's, reported next to the
    rows that were measured."""
    from tests.conftest import load_tool
    acceptance = load_tool('tools/gpu_acceptance.py')
    report = acceptance.Report(str(tmp_path), dry_run=True)

    def models():
        rows = [{'model': 'mask2former', 'train step s': 0.32},
                {'model': 'panoptic_segformer', 'error': 'Traceback ...\nNotImplementedError: '
                 '"sigmoid_focal_loss_forward_cuda_kernel" not implemented for \'BFloat16\''}]
        raise acceptance.SectionFailed('panoptic_segformer failed', dict(rows=rows))

    entry = report.run('models', models)
    assert entry['status'] == 'failed' and entry['error'] == 'panoptic_segformer failed'
    with open(tmp_path / 'gpu_acceptance.json') as f:
        saved = json.load(f)['sections']['models']
    assert saved['result']['rows'][0] == {'model': 'mask2former', 'train step s': 0.32}
    markdown = (tmp_path / 'gpu_acceptance.md').read_text()
    assert '| mask2former | 0.32 |' in markdown
    assert 'panoptic_segformer failed:' in markdown and "for 'BFloat16'" in markdown
    assert '| panoptic_segformer |' not in markdown  # the traceback is not a table cell
