"""tools/analysis/memory_usage.py's probe against hand-computed attention statistics."""
import math
import os.path as osp
import sys

import pytest
import torch
from torch import nn

from tests.conftest import REPO_ROOT

sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'analysis'))
import memory_usage  # noqa: E402


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        from mmmaps.models.layers.memory_attention import MemoryCrossAttention
        self.memory_attn = MemoryCrossAttention(embed_dims=4, memory_dims=3, num_heads=1)


def probe_of(layer):
    model = nn.Sequential(layer)
    return memory_usage.UsageProbe(model), '0.memory_attn'


def test_identical_items_give_uniform_attention_and_unit_value_spread():
    layer = Layer()
    probe, name = probe_of(layer)
    query = torch.randn(2, 5, 4)
    memory = torch.tensor([1.0, 2.0, 3.0]).expand(2, 4, 3).contiguous()
    with torch.no_grad():
        layer.memory_attn(query, memory, torch.zeros(2, 4, dtype=torch.bool))
    row = probe.summary()[name]
    assert row['max_weight'] == pytest.approx(0.25)
    assert row['entropy'] == pytest.approx(math.log(4), rel=1e-5)
    assert row['uniform_entropy'] == pytest.approx(math.log(4))
    assert row['value_spread'] == pytest.approx(1.0, abs=1e-5)


def test_zero_value_projection_means_no_update_and_padding_is_ignored():
    layer = Layer()
    nn.init.zeros_(layer.memory_attn.v_proj.weight)
    nn.init.zeros_(layer.memory_attn.v_proj.bias)
    probe, name = probe_of(layer)
    query = torch.full((1, 2, 4), 3.0)  # |q| = 6 for every query
    memory = torch.randn(1, 3, 3)
    padding = torch.tensor([[False, False, True]])  # 2 valid slots
    with torch.no_grad():
        layer.memory_attn(query, memory, padding)
    row = probe.summary()[name]
    assert row['update_norm'] == 0.0 and row['update_ratio'] == 0.0
    assert row['query_norm'] == pytest.approx(6.0)
    assert row['uniform_entropy'] == pytest.approx(math.log(2))


def test_peaked_attention_has_zero_entropy():
    layer = Layer()
    attn = layer.memory_attn
    with torch.no_grad():
        attn.q_proj.weight.copy_(torch.eye(4) * 100)
        attn.q_proj.bias.zero_()
        attn.k_proj.weight.zero_()
        attn.k_proj.weight[0, 0] = 1.0
        attn.k_proj.bias.zero_()
    probe, name = probe_of(layer)
    query = torch.tensor([[[1.0, 0, 0, 0]]])
    memory = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])  # only item 0 has a key along q
    with torch.no_grad():
        layer.memory_attn(query, memory)
    row = probe.summary()[name]
    assert row['max_weight'] == pytest.approx(1.0, abs=1e-6)
    assert row['entropy'] == pytest.approx(0.0, abs=1e-5)


def test_value_spread_is_of_centred_values_without_the_bias():
    """Two items either side of the bank mean, through an identity W_V with a large bias:
    their centred values are opposite (cosine -1), whatever the bias (cosine of the raw
    f_V outputs: near +1)."""
    layer = Layer()
    with torch.no_grad():
        layer.memory_attn.v_proj.weight.copy_(torch.eye(4, 3))
        layer.memory_attn.v_proj.bias.fill_(50.0)
    mean = torch.tensor([5.0, -2.0, 1.0])
    probe = memory_usage.UsageProbe(nn.Sequential(layer), centre_of=lambda name: mean)
    offset = torch.tensor([0.3, 0.1, -0.2])
    memory = torch.stack([mean + offset, mean - offset])[None]
    with torch.no_grad():
        raw = layer.memory_attn.v_proj(memory)[0]
        layer.memory_attn(torch.randn(1, 2, 4), memory)
    assert torch.nn.functional.cosine_similarity(raw[0], raw[1], dim=0) > 0.99
    assert probe.summary()['0.memory_attn']['value_spread'] == pytest.approx(-1.0, abs=1e-5)
