"""grouped_attention computes what Hugging Face's SDPA with repeat_kv computes (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from evaluation.engine.server.attention import grouped_attention


class _Module:
    num_key_value_groups = 4
    is_causal = True


@pytest.mark.parametrize("length", [1, 5])
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_grouped_attention_equals_repeat_kv_sdpa(length, mask_kind):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    rows, heads, kv_heads, keys, dim = 3, 8, 2, 11, 16
    query = torch.randn(rows, length, heads, dim).transpose(1, 2)  # as the attention modules pass it
    key = torch.randn(rows, kv_heads, keys, dim)
    value = torch.randn(rows, kv_heads, keys, dim)
    allowed = torch.rand(rows, 1, length, keys) > 0.3
    allowed[..., 0] = True
    mask = allowed if mask_kind == "bool" else torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    module = _Module()
    module.num_key_value_groups = heads // kv_heads
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=dim**-0.5)
    got, weights = grouped_attention(module, query, key, value, mask, scaling=dim**-0.5)
    assert weights is None and got.shape == expected.shape == (rows, length, heads, dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_decode_steps_mask_is_not_copied_per_head(monkeypatch):
    rows, heads, kv_heads, keys, dim = 3, 8, 2, 11, 16
    query, key = torch.randn(rows, heads, 1, dim), torch.randn(rows, kv_heads, keys, dim)
    mask = torch.rand(rows, 1, 1, keys) > 0.3
    mask[..., 0] = True
    module = _Module()
    module.num_key_value_groups = heads // kv_heads
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    want, _ = sdpa_attention_forward(module, query, key, key, mask, scaling=0.25)
    monkeypatch.setattr(torch.Tensor, "repeat", lambda *a: pytest.fail("the mask was repeated"))
    got, _ = grouped_attention(module, query, key, key, mask, scaling=0.25)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_without_a_mask_or_groups_it_is_hugging_faces_sdpa():
    from transformers.integrations import sdpa_attention

    calls = []
    original = sdpa_attention.sdpa_attention_forward
    sdpa_attention.sdpa_attention_forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        query, key = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 3, 8)
        module = _Module()
        module.num_key_value_groups = 1
        grouped_attention(module, query, key, key, None)  # no mask
        grouped_attention(module, query, key, key, torch.ones(2, 1, 3, 3, dtype=torch.bool))  # no groups
    finally:
        sdpa_attention.sdpa_attention_forward = original
    assert len(calls) == 2
