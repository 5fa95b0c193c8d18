"""The gather-based deformable attention (mmmaps.deployment.deformable_attention) against
mmcv's own PyTorch implementation (F.grid_sample), in PyTorch and through onnxruntime."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmmaps.deployment.deformable_attention import multi_scale_deformable_attn_gather
from tests.conftest import REPO_ROOT
from tests.test_deployment.conftest import tool_env

TOLERANCE = 1e-5  # fp32: the two sum the same products in another order


def reference(*args):
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
    return multi_scale_deformable_attn_pytorch(*args)


def inputs(shapes, bs=2, heads=3, dims=5, queries=13, points=4, spread=(-0.25, 1.25),
           seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(shapes)
    levels = len(shapes)
    value = torch.randn(bs, int(shapes.prod(1).sum()), heads, dims, generator=generator)
    low, high = spread
    locations = low + (high - low) * torch.rand(bs, queries, heads, levels, points, 2,
                                                generator=generator)
    weights = torch.rand(bs, queries, heads, levels, points, generator=generator)
    return value, shapes, locations, weights


@pytest.mark.parametrize('shapes', [[[6, 7], [3, 4], [1, 2]], [[1, 1]], [[5, 1], [1, 5]],
                                    [[16, 12], [8, 6], [4, 3], [2, 2]]])
def test_equals_grid_sample_inside_outside_and_at_the_border(shapes):
    value, shapes, locations, weights = inputs(shapes)
    h, w = shapes[:, 0].float(), shapes[:, 1].float()  # per level
    # exact corners, edges and pixel centres, and points just outside the map
    locations[0, 0, :, :, 0] = 0.0
    locations[0, 0, :, :, 1] = 1.0
    locations[0, 1, :, :, 0, 0] = 0.5 / w          # the first pixel centre
    locations[0, 1, :, :, 1, 0] = 1 - 0.5 / w      # the last pixel centre
    locations[0, 1, :, :, 2, 1] = -0.5 / h         # a pixel above the map: weight 0 ...
    locations[0, 1, :, :, 3, 1] = -0.49 / h        # ... and just not: 1% of the top row
    locations[1, 2] = 5.0  # far outside: zero
    expected = reference(value, shapes, locations, weights)
    got = multi_scale_deformable_attn_gather(value, shapes, locations, weights)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < TOLERANCE
    assert expected[1, 2].abs().max() == 0 and got[1, 2].abs().max() == 0


def test_a_hand_computed_point():
    """One head, one level 2x2, one point at pixel coordinates (0.25, 0.5): bilinear mix
    of the four values with weights 0.375, 0.125, 0.375, 0.125, times the attention 2."""
    value = torch.tensor([1.0, 10.0, 100.0, 1000.0]).view(1, 4, 1, 1)
    # pixel x = 0.25 -> location (0.25 + 0.5) / 2; pixel y = 0.5 -> (0.5 + 0.5) / 2
    locations = torch.tensor([0.375, 0.5]).view(1, 1, 1, 1, 1, 2)
    weights = torch.full((1, 1, 1, 1, 1), 2.0)
    expected = 2 * (0.375 * 1 + 0.125 * 10 + 0.375 * 100 + 0.125 * 1000)
    got = multi_scale_deformable_attn_gather(value, torch.tensor([[2, 2]]), locations, weights)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_refuses_shapes_that_do_not_match_the_values():
    value, shapes, locations, weights = inputs([[4, 4], [2, 2]])
    with pytest.raises(ValueError, match=r'\[\[4, 4\], \[2, 3\]\] do not match value \(20 keys\)'):
        multi_scale_deformable_attn_gather(value, [[4, 4], [2, 3]], locations, weights)


def test_onnx_graph_has_no_grid_sample_and_onnxruntime_agrees(tmp_path):
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    value, shapes, locations, weights = inputs([[12, 10], [6, 5], [3, 3]], bs=1, heads=2,
                                               dims=8, queries=40)

    class Attention(torch.nn.Module):
        def forward(self, value, locations, weights):
            return multi_scale_deformable_attn_gather(value, shapes, locations, weights)

    path = str(tmp_path / 'msda.onnx')
    torch.onnx.export(Attention(), (value, locations, weights), path, opset_version=17,
                      input_names=['value', 'locations', 'weights'], output_names=['out'],
                      dynamo=False)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert 'GridSample' not in ops and 'Gather' in ops
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = session.run(None, dict(value=value.numpy(), locations=locations.numpy(),
                                 weights=weights.numpy()))[0]
    expected = reference(value, shapes, locations, weights).numpy()
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize('kind', ['gather', 'grid_sample'])
def test_export_of_a_whole_model_with_either_kind(kind, synthetic_root, tmp_path, monkeypatch):
    """Mask2Former's tiny config exported both ways at two shapes (dynamic): the export's own
    check compares onnxruntime with the PyTorch model (which runs grid_sample); the graph
    holds GridSample only when asked for."""
    onnx = pytest.importorskip('onnx')
    from mmmaps.deployment import export_onnx
    from tests.conftest import TINY_M2F, init_checkpoints
    monkeypatch.setenv('MMMAPS_SYNTHETIC_ROOT', synthetic_root)
    checkpoint = init_checkpoints(dict(m2f=TINY_M2F), tmp_path)['m2f']
    info = export_onnx(TINY_M2F, checkpoint, str(tmp_path / 'export'), shape=(64, 64),
                       dynamic=True, deformable_attention=kind, log=lambda *a: None)
    assert info['deformable_attention'] == kind
    assert max(max(d.values()) for d in info['verification']['model'].values()) < 1e-3
    ops = [node.op_type for node in
           onnx.load(str(tmp_path / 'export' / 'model.onnx')).graph.node]
    # grid_sample: one per level (3) in each of the pixel decoder's encoder layers
    assert ops.count('GridSample') == (3 * 2 if kind == 'grid_sample' else 0)


def test_mmdeploy_export_is_one_plugin_node_per_layer_and_refused_by_onnxruntime(
        synthetic_root, tmp_path, monkeypatch):
    """--deformable-attention mmdeploy: mmdeploy's op (name, inputs, attribute) where each
    attention layer was; nothing else of the graph changes; the runtime refuses the folder
    with a message that says what to do, and onnxruntime itself has no kernel for it."""
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    from mmmaps.deployment import ONNXPanopticPredictor, export_onnx
    from mmmaps.deployment.errors import DeploymentError
    from tests.conftest import TINY_M2F, init_checkpoints
    monkeypatch.setenv('MMMAPS_SYNTHETIC_ROOT', synthetic_root)
    checkpoint = init_checkpoints(dict(m2f=TINY_M2F), tmp_path)['m2f']
    graphs = {}
    for kind in ('mmdeploy', 'gather'):
        info = export_onnx(TINY_M2F, checkpoint, str(tmp_path / kind), shape=(64, 64),
                           deformable_attention=kind, log=lambda *a: None)
        graphs[kind] = onnx.load(str(tmp_path / kind / 'model.onnx')).graph
    assert info['verification']['model']  # the gather export was verified
    nodes = [n for n in graphs['mmdeploy'].node
             if (n.domain, n.op_type) == ('mmdeploy', 'MMCVMultiScaleDeformableAttention')]
    assert len(nodes) == 2  # the tiny pixel decoder's 2 encoder layers
    for node in nodes:
        assert len(node.input) == 5 and len(node.output) == 1
        assert [(a.name, a.i) for a in node.attribute] == [('im2col_step', 64)]
    assert not any(n.op_type == 'GridSample' for n in graphs['mmdeploy'].node)
    # the gather ops that gave the trace its values are not in the graph
    floors = {kind: sum(n.op_type == 'Floor' for n in g.node) for kind, g in graphs.items()}
    assert floors['gather'] - floors['mmdeploy'] == 2 * 2  # x and y, 2 layers
    # the rest of the graph: the convolutions and matmuls of both exports are the same,
    # but for the gather version's weighted sum (one MatMul per layer)
    counts = {kind: {op: sum(n.op_type == op for n in g.node)
                     for op in ('Conv', 'MatMul', 'Softmax')} for kind, g in graphs.items()}
    assert counts['gather'] == dict(counts['mmdeploy'],
                                    MatMul=counts['mmdeploy']['MatMul'] + 2)
    with pytest.raises(DeploymentError, match=r'exported for TensorRT .* onnxruntime has no '
                                              r'kernel for it.* --deformable-attention gather'):
        ONNXPanopticPredictor(str(tmp_path / 'mmdeploy'))
    with pytest.raises(Exception, match='MMCVMultiScaleDeformableAttention'):
        ort.InferenceSession(str(tmp_path / 'mmdeploy' / 'model.onnx'),
                             providers=['CPUExecutionProvider'])


def test_running_an_export_needs_onnxruntime_only(synthetic_root, val_image, tmp_path,
                                                  monkeypatch):
    """Making an export needs onnx (torch's exporter imports it); running one needs only
    onnxruntime: in a process where ``import onnx`` fails, the predictor gives the same
    panoptic map as in this process."""
    pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    from mmmaps.deployment import ONNXPanopticPredictor, export_onnx
    from tests.conftest import TINY_M2F, init_checkpoints
    monkeypatch.setenv('MMMAPS_SYNTHETIC_ROOT', synthetic_root)
    checkpoint = init_checkpoints(dict(m2f=TINY_M2F), tmp_path)['m2f']
    export = str(tmp_path / 'export')
    export_onnx(TINY_M2F, checkpoint, export, shape=(128, 128), log=lambda *a: None)
    expected = ONNXPanopticPredictor(export, num_threads=1)(val_image).pred_panoptic_seg.sem_seg
    out = tmp_path / 'pan.npy'
    script = f'''
import sys
sys.modules['onnx'] = None  # import onnx fails, as where it is not installed
import numpy as np
from mmmaps.deployment import ONNXPanopticPredictor
sample = ONNXPanopticPredictor({export!r}, num_threads=1)({val_image!r})
np.save({str(out)!r}, sample.pred_panoptic_seg.sem_seg.numpy())
'''
    proc = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT,
                          env=tool_env(synthetic_root), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.load(out), expected.numpy())


def test_onnx_speed_benchmark_runs_with_its_defaults(synthetic_root, tmp_path):
    """benchmarks/onnx_speed.py as documented, on the tiny Mask2Former at 64x64: every
    runnable deformable-attention kind timed (mmdeploy is not: onnxruntime cannot run it),
    each export's outputs equal to PyTorch's."""
    pytest.importorskip('onnxruntime')
    out = tmp_path / 'speed.json'
    proc = subprocess.run(
        [sys.executable, 'benchmarks/onnx_speed.py', '--sizes', 'tiny', '--tiny-size', '64',
         '--families', 'mask2former', '--iters', '1', '--warmup', '0', '--out', str(out)],
        cwd=REPO_ROOT, env=tool_env(synthetic_root),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    with open(out) as f:
        rows = json.load(f)['rows']
    assert [r['family'] for r in rows] == ['mask2former']
    assert sorted(rows[0]['ort']) == ['gather', 'grid_sample']
    for result in rows[0]['ort'].values():
        assert result['images_per_s'] > 0
        assert max(result['max_abs_difference'].values()) < 1e-3
