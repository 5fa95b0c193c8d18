"""tools/deployment/onnx_demo.py draws what demo/image_demo.py draws (tiny Mask2Former, MAPS).

The checkpoints are random initialisations whose class head is sharpened (its weights
scaled) so that some queries pass the fusion head's thresholds: an untrained model predicts
void everywhere, which would make the comparison empty. Among a few seeds the first whose
PyTorch prediction on the test image has at least two panoptic segments is kept.
"""
import copy
import os
import os.path as osp
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.conftest import REPO_ROOT, TINY_M2F, load_config_with_root, load_tool

TINY_MAPS = osp.join(REPO_ROOT, 'configs', 'maps', 'maps_r18_synthetic-panoptic.py')
CLS_SCALE = 10.0  # sharpens the random class head: some queries become confident
SEEDS = range(8)
MAX_DIFFERENT = 0.005  # fraction of pixels the two PNGs may differ on
SUMMARY = re.compile(r'^(?P<img>.+): (?P<n>\d+) panoptic segments(?P<rest>.*)$', re.M)


def _segments(model, cfg, image):
    from mmmaps.apis import dataset_meta_of, inference_panoptic, panoptic_segments
    model.cfg = cfg
    return panoptic_segments(inference_panoptic(model, image), dataset_meta_of(cfg)['classes'])


def make_checkpoint(cfg, image, out, memory=None):
    """A random init with a sharpened class head whose prediction on ``image`` has >= 2
    panoptic segments (the first such seed); saved as a checkpoint at ``out``."""
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.runner import save_checkpoint

    import mmmaps  # noqa: F401
    register_all_modules()
    for seed in SEEDS:
        torch.manual_seed(seed)
        model = MODELS.build(copy.deepcopy(cfg.model))
        model.init_weights()
        with torch.no_grad():
            model.panoptic_head.cls_embed.weight.mul_(CLS_SCALE)
        model.eval()
        if memory is not None:
            model.attach_memory(memory)
        segments = _segments(model, cfg, image)
        if len(segments) >= 2:
            meta = dict(iter=0, seed=seed)
            if memory is not None:
                meta['memory'] = memory.signature()  # as MemoryHook records it
            save_checkpoint(dict(state_dict=model.state_dict(), meta=meta), out)
            return out, segments
    pytest.fail(f'no seed in {SEEDS} gives 2 panoptic segments on {image}')


def tool_env(root):
    """The environment of conftest's run_tool (this checkout first, the session's data)."""
    return dict(os.environ, MMMAPS_SYNTHETIC_ROOT=root,
                PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT,
                                                         os.environ.get('PYTHONPATH')])))


def run_tools(commands, root, timeout=600):
    """conftest's run_tool for several tools at once (side by side: their start-up, mostly
    imports, dominates); every one must exit 0."""
    procs = [subprocess.Popen([sys.executable] + args, cwd=REPO_ROOT, env=tool_env(root),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in commands]
    results = []
    for args, proc in zip(commands, procs):
        stdout, stderr = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f'{args} failed:\n{stdout[-4000:]}\n{stderr[-4000:]}'
        results.append(subprocess.CompletedProcess(args, proc.returncode, stdout, stderr))
    return results


def summary_of(stdout, image):
    """(count, text after the count) of the segment summary line printed for ``image``."""
    for match in SUMMARY.finditer(stdout):
        if match.group('img') == image:
            return int(match.group('n')), match.group('rest')
    raise AssertionError(f'no segment summary line for {image} in:\n{stdout}')


def read_png(path):
    image = cv2.imread(path)
    assert image is not None, f'{path} was not written'
    return image


@pytest.fixture(scope='module')
def exported(synthetic_root, synthetic_memory, val_image, tmp_path_factory):
    """{name: (config, cfg-options, checkpoint, export folder)} of the two tiny models."""
    from mmmaps.memory.external_memory import build_external_memory
    folder = tmp_path_factory.mktemp('onnx_demo')
    out = {}
    for name, config, options in (
            ('mask2former', TINY_M2F, []),
            ('maps', TINY_MAPS, [f'memory.root={synthetic_memory}'])):
        cfg = load_config_with_root(config, synthetic_root,
                                    dict(o.split('=', 1) for o in options))
        memory = (build_external_memory(cfg.memory, device='cpu') if name == 'maps' else
                  None)
        checkpoint, _ = make_checkpoint(cfg, val_image, str(folder / f'{name}.pth'), memory)
        out[name] = (config, options, checkpoint, str(folder / f'{name}_onnx'))
    run_tools([['tools/deployment/export_onnx.py', config, checkpoint, '--out', export_dir]
               + (['--cfg-options'] + options if options else [])
               for config, options, checkpoint, export_dir in out.values()], synthetic_root)
    return out


@pytest.mark.parametrize('name', ['mask2former', 'maps'])
def test_onnx_demo_draws_what_the_demo_draws(name, exported, val_image, synthetic_root,
                                             tmp_path, monkeypatch, capsys):
    """Both demos' main() in this process (their command lines run in the other tests and
    in tests/test_tools; a fresh interpreter each would double the time)."""
    config, options, checkpoint, export_dir = exported[name]
    torch_png, onnx_png = str(tmp_path / 'torch.png'), str(tmp_path / 'onnx.png')
    monkeypatch.setenv('MMMAPS_SYNTHETIC_ROOT', synthetic_root)
    capsys.readouterr()
    load_tool('demo/image_demo.py').main(
        [val_image, config, checkpoint, '--device', 'cpu', '--out-file', torch_png,
         '--score-thr', '0.3'] + (['--cfg-options'] + options if options else []))
    demo = capsys.readouterr().out
    load_tool('tools/deployment/onnx_demo.py').main(
        [val_image, export_dir, '--threads', '1', '--out-file', onnx_png, '--score-thr', '0.3'])
    onnx = capsys.readouterr().out

    count, segments = summary_of(demo, val_image)
    assert count >= 2, f'the comparison needs >= 2 segments:\n{demo}'
    assert summary_of(onnx, val_image)[0] == count
    # the same segments (names; areas may differ by a few boundary pixels)
    names = re.findall(r'(\w+) \(\d+ px\)', segments)
    assert re.findall(r'(\w+) \(\d+ px\)', summary_of(onnx, val_image)[1]) == names
    assert f'wrote {onnx_png}' in onnx

    a, b = read_png(torch_png), read_png(onnx_png)
    assert a.shape == b.shape
    different = float(np.any(a != b, axis=-1).mean())
    assert different < MAX_DIFFERENT, f'{different:.2%} of the pixels differ'


def test_onnx_demo_refuses_a_folder_that_is_not_an_export(val_image, synthetic_root,
                                                          tmp_path):
    folder = tmp_path / 'not_an_export'
    folder.mkdir()
    (folder / 'model.onnx').write_bytes(b'')
    out = str(tmp_path / 'x.png')
    proc = subprocess.run([sys.executable, 'tools/deployment/onnx_demo.py', val_image,
                           str(folder), '--out-file', out], cwd=REPO_ROOT,
                          env=tool_env(synthetic_root),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f'onnx_demo.py: error: {folder} is not an ONNX export' in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not osp.exists(out)


def test_web_demo_serves_the_exports(exported, val_image, synthetic_root, tmp_path):
    """demo/web_demo.py --backend onnxruntime: the segments and retrievals of
    ONNXPanopticPredictor on the same file; memory off explained, not faked."""
    pytest.importorskip('gradio_client', reason='the web demo needs requirements/demo.txt')
    import gradio_client

    from mmmaps.deployment import ONNXPanopticPredictor
    from tests.web_demo_utils import pan_segments, running_demo, segment, table_rows

    exports = [exported['mask2former'][3], exported['maps'][3]]
    expected = {}
    for name, export_dir in zip(('mask2former', 'maps'), exports):
        predictor = ONNXPanopticPredictor(export_dir, num_threads=1)
        sample = predictor(val_image)
        expected[name] = (pan_segments(sample, predictor.dataset_meta['classes']),
                          sample.metainfo.get('retrieval'))
    with running_demo(exports + ['--backend', 'onnxruntime', '--threads', '1'],
                      synthetic_root, tmp_path) as server:
        client = gradio_client.Client(server['url'], verbose=False)
        status, models = segment(client, val_image, memory_off=True)
    assert status.endswith('64x64')
    for name, outputs in zip(('mask2former', 'maps'), models):
        segments, retrieval = expected[name]
        assert len(segments) >= 2
        assert sorted((r[0], int(r[3])) for r in table_rows(outputs[2])) == segments
        assert outputs[1]['visible'] is False  # no memory-off twin of an export
        assert '(onnxruntime)' in outputs[5]
    ids = [i for i in expected['maps'][1].image_ids[0].tolist() if i >= 0]
    assert [int(r[1]) for r in table_rows(models[1][4])] == ids and ids
    assert 'memory off needs the PyTorch backend' in models[1][5]
    assert 'memory off' not in models[0][5]
