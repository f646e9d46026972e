"""Attention for grouped-query models without copying keys and values per query head.

With an attention mask (padded batches, a shared prefix, every static decode step), Hugging Face's
SDPA path repeats each key/value head once per query head of its group (`repeat_kv`) before
attending: for a model with 32 query heads and 4 key/value heads, eight copies of every layer's keys
and values at every forward. Here the query heads of a group become query positions of one SDPA call
over that group's keys and values, each with its own row of the mask: the same dot products, the
keys and values read once. Only the engine's own forwards use it (`engine_attention`); Hugging
Face's `generate`, which the tests compare with, keeps its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

ENGINE_ATTENTION = "engine_grouped_sdpa"
_registered: bool | None = None


def grouped_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """Hugging Face's attention-function signature; query [rows, heads, length, dim], keys and values
    [rows, kv_heads, keys, dim], a [rows, 1, length, ≥keys] mask. Anything else goes to Hugging Face's SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    plain = attention_mask is None or attention_mask.ndim != 4 or attention_mask.shape[1] != 1
    if kv_heads == heads or plain or dropout or kwargs.get("output_attentions") or heads % kv_heads:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    group = heads // kv_heads
    mask = attention_mask[:, :, :, : key.shape[-2]]
    # Query head h attends with key/value head h // group (repeat_kv's order); position p of its
    # r-th head (r = h % group) becomes query row r * length + p of that key/value head.
    grouped = query.reshape(rows, kv_heads, group * length, dim)
    # One query position a row (a decode step): its mask row serves every head of the group as it is.
    mask = mask if length == 1 else mask.repeat(1, 1, group, 1)
    out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(rows, heads, length, dim).transpose(1, 2).contiguous(), None


def _register() -> bool:
    """Make `ENGINE_ATTENTION` a name transformers knows: our attention, and SDPA's masks."""
    global _registered
    if _registered is None:
        try:
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
        except ImportError:  # older transformers: the model's own SDPA serves
            _registered = False
        else:
            AttentionInterface.register(ENGINE_ATTENTION, grouped_attention)
            AttentionMaskInterface.register(ENGINE_ATTENTION, sdpa_mask)
            _registered = True
    return _registered


def attention_shape(config: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of a Llama-style config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return heads, kv_heads, getattr(config, "head_dim", None) or config.hidden_size // heads


def is_grouped(model: Any) -> bool:
    if not getattr(model.config, "num_attention_heads", None):
        return False
    heads, kv_heads, _ = attention_shape(model.config)
    return kv_heads < heads


@contextmanager
def engine_attention(model: Any) -> Iterator[None]:
    """Within: a grouped-query SDPA model attends with `grouped_attention` (the layers look the
    function up by the config's name on every call, so the swap is undone when we leave)."""
    config = model.config
    previous = getattr(config, "_attn_implementation", None)
    if previous != "sdpa" or not is_grouped(model) or not _register():
        yield
        return
    config._attn_implementation = ENGINE_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous
