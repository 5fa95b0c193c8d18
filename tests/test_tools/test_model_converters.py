"""tools/model_converters/panoptic_segformer_official.py: every key of the authors' models.

The authors' key lists and shapes come from the golden file, which ``make_golden.py``
wrote by building their R50, R101, Swin-L and PVTv2-B5 models from their configs; the
backbone outputs of small versions of their Swin and PVTv2 code check the backbone
conversion numerically.
"""
import hashlib
import json
import os.path as osp

import numpy as np
import pytest
import torch

from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

from mmmaps.converters import ConversionError, check_against, expected_state
from mmmaps.converters import panoptic_segformer_official as psf

from ..conftest import REPO_ROOT, load_tool
from ..test_models.test_psf_official_golden import GOLDEN, authors_tensor

TOOL = 'tools/model_converters/panoptic_segformer_official.py'


@pytest.fixture(scope='module')
def golden():
    data = np.load(GOLDEN)
    return data, json.loads(bytes(data['info']))


def meta_state(keys):
    """The authors' state dict as shapes only (meta tensors: no memory)."""
    return {name: torch.empty(shape, device='meta') for name, shape in keys}


def release_config(variant):
    return osp.join(REPO_ROOT, 'configs', 'panoptic_segformer', psf.VARIANTS[variant])


@pytest.mark.parametrize('variant', ['r50', 'r101', 'swin-l', 'pvtv2-b5'])
def test_every_key_of_the_authors_models_converts(golden, variant):
    _, info = golden
    state = meta_state(info['keys'][variant])
    assert psf.detect_variant(state) == variant
    converted, source_of = psf.convert_state_dict(state, variant)
    check_against(converted, expected_state(release_config(variant)), source_of, variant)
    sources = set(source_of.values())
    if variant in ('r50', 'r101'):  # one source tensor per model tensor, each used once
        assert sources == set(state) and len(converted) == len(state)
    else:  # the backbone goes through mmdet's converter as a whole
        assert sources - {'backbone.*'} == {k for k in state if not k.startswith('backbone.')}
    total = sum(int(np.prod(shape)) for name, shape in info['keys'][variant]
                if not name.endswith('num_batches_tracked'))
    assert sum(t.numel() for k, t in converted.items()
               if not k.endswith('num_batches_tracked')) == total


def test_stuff_queries_swap_their_halves():
    content, pos = torch.randn(53, 256), torch.randn(53, 256)
    state = {'backbone.layer3.0.conv1.weight': torch.zeros(1),
             'bbox_head.stuff_query.weight': torch.cat([content, pos], 1)}
    converted, _ = psf.convert_state_dict(state, 'r50')
    # mmmaps splits (positional, content), as the head's forward does
    got_pos, got_content = converted['bbox_head.stuff_queries.weight'].split(256, 1)
    assert torch.equal(got_pos, pos) and torch.equal(got_content, content)


@pytest.mark.parametrize('name,mmdet_type,kwargs', [
    ('swin', 'SwinTransformer',
     dict(embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=7,
          out_indices=(1, 2, 3))),
    ('pvtv2', 'PyramidVisionTransformerV2',
     dict(embed_dims=32, num_layers=[2, 2, 2, 2], num_heads=[1, 2, 5, 8],
          mlp_ratios=(8, 8, 4, 4), out_indices=(1, 2, 3))),
])
def test_backbone_conversion_against_the_authors_backbones(golden, name, mmdet_type, kwargs):
    """Small versions of the authors' Swin / PVTv2 code (the released Swin-L / PVTv2-B5 use
    the same code) vs mmdet's backbones with the converted weights."""
    data, info = golden
    register_all_modules()
    state = {k: torch.from_numpy(authors_tensor(k, tuple(shape)))
             for k, shape in info['backbones'][name]['keys']}
    converted, _ = psf.convert_backbone(state, 'swin-l' if name == 'swin' else 'pvtv2-b5')
    net = MODELS.build(dict(type=mmdet_type, **kwargs))
    net.load_state_dict({k[len('backbone.'):]: v for k, v in converted.items()}, strict=True)
    net.eval()  # (mmdet's Swin.train() returns None)
    with torch.no_grad():
        outs = net(torch.from_numpy(data['backbone_input']))
    assert len(outs) == 3
    for level, out in enumerate(outs):
        np.testing.assert_allclose(out, data[f'{name}.out{level}'], atol=1e-4, rtol=0)


def r50_state(info):
    return {name: torch.zeros(shape) for name, shape in info['keys']['r50']}


def test_unmapped_missing_and_misshaped_keys_are_named(golden):
    _, info = golden
    expected = expected_state(release_config('r50'))
    state = r50_state(info)
    state['bbox_head.things_mask_head.blocks.0.attn.extra.weight'] = torch.zeros(3)
    with pytest.raises(ConversionError, match=r'things_mask_head\.blocks\.0\.attn\.extra'):
        psf.convert_state_dict(state, 'r50')

    state = r50_state(info)
    del state['bbox_head.stuff_mask_head.attnen.q.weight']
    converted, source_of = psf.convert_state_dict(state, 'r50')
    with pytest.raises(ConversionError, match=r'stuff_mask_decoder\.tail\.q_proj\.weight'):
        check_against(converted, expected, source_of, 'r50')

    state = r50_state(info)
    state['bbox_head.cls_branches.5.weight'] = torch.zeros(81, 256)
    converted, source_of = psf.convert_state_dict(state, 'r50')
    with pytest.raises(ConversionError,
                       match=r'bbox_head\.cls_branches\.5\.weight.*\(81, 256\).*\(80, 256\)'):
        check_against(converted, expected, source_of, 'r50')


def test_tool_writes_a_checkpoint_that_names_its_source(golden, tmp_path, capsys):
    _, info = golden
    src, dst = str(tmp_path / 'panformer_r50_24e.pth'), str(tmp_path / 'out' / 'r50.pth')
    torch.save(dict(state_dict=r50_state(info), meta=dict(epoch=24)), src)
    tool = load_tool(TOOL)
    assert tool.main([src, dst, '--variant', 'r50']) == 0
    checkpoint = torch.load(dst, map_location='cpu', weights_only=True)
    with open(src, 'rb') as f:
        assert checkpoint['meta']['source_sha256'] == hashlib.sha256(f.read()).hexdigest()
    assert checkpoint['meta']['variant'] == 'r50'
    assert checkpoint['meta']['source_meta'] == dict(epoch=24)
    assert torch.equal(checkpoint['state_dict']['level_embed'], torch.zeros(4, 256))

    # an existing output: refused without --force, replaced with it
    assert tool.main([src, dst]) == 1
    assert 'exists' in capsys.readouterr().err
    assert tool.main([src, dst, '--force']) == 0
    # a file the converter did not write is never replaced
    foreign = str(tmp_path / 'notes.pth')
    with open(foreign, 'w') as f:
        f.write('my notes')
    assert tool.main([src, foreign, '--force']) == 1
    assert 'not a checkpoint written by an mmmaps converter' in capsys.readouterr().err
    with open(foreign) as f:
        assert f.read() == 'my notes'
    # a variant the keys contradict
    assert tool.main([src, str(tmp_path / 'x.pth'), '--variant', 'swin-l']) == 1
    assert 'holds a r50 backbone' in capsys.readouterr().err
    assert not osp.exists(tmp_path / 'x.pth')


def test_a_checkpoint_with_code_is_not_unpickled(tmp_path, capsys):
    src = str(tmp_path / 'crafted.pth')
    torch.save(dict(state_dict={'w': torch.zeros(1)}, meta=dict(obj=Exception('x'))), src)
    tool = load_tool(TOOL)
    assert tool.main([src, str(tmp_path / 'out.pth')]) == 1
    assert 'does not unpickle' in capsys.readouterr().err
    assert not osp.exists(tmp_path / 'out.pth')
