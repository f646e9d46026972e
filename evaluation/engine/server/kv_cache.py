"""Key/value caches of transformers models: walking their tensors, and keeping the caches of recent
few-shot prefixes so later batches need not prefill them again.
"""

from __future__ import annotations

import copy
import itertools
from collections import OrderedDict
from typing import Any

import torch


def map_cache(cache: Any, fn) -> None:
    """Apply `fn` to every key and value tensor of a transformers cache (4.5x and 5.x layouts), layer
    by layer, keys before values."""
    for inner in ("self_attention_cache", "cross_attention_cache"):
        if hasattr(cache, inner):
            map_cache(getattr(cache, inner), fn)
            return
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            if getattr(layer, "keys", None) is not None and isinstance(layer.keys, torch.Tensor):
                layer.keys = fn(layer.keys)
                layer.values = fn(layer.values)
        return
    if hasattr(cache, "key_cache"):
        pairs = [(fn(k), fn(v)) for k, v in zip(cache.key_cache, cache.value_cache, strict=True)]  # layer order
        cache.key_cache, cache.value_cache = [k for k, _ in pairs], [v for _, v in pairs]
        return
    raise TypeError(f"unsupported cache type {type(cache).__name__}")


def cache_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer, without changing the cache."""
    tensors: list[torch.Tensor] = []
    map_cache(cache, lambda t: tensors.append(t) or t)
    return list(zip(tensors[::2], tensors[1::2], strict=True))


_EMPTY_CACHES: dict[tuple, Any] = {}


def empty_cache(layers: int, dtype: torch.dtype, device: torch.device) -> Any:
    """A transformers cache of `layers` layers holding nothing yet (made once for each such kind: the
    server's warm-up makes its model's, PackedGraphs.prepare). Filling a new cache layer by layer
    (`update`) makes and joins empty tensors, ~10 operators a layer on the host."""
    kind = (layers, dtype, torch.device(device))
    empty = _EMPTY_CACHES.get(kind)
    if empty is None:
        from transformers import DynamicCache

        empty = DynamicCache()
        nothing = torch.empty(1, 1, 0, 1, dtype=dtype, device=device)
        for layer in range(layers):
            empty.update(nothing, nothing, layer)
        _EMPTY_CACHES[kind] = empty
    return empty


def stacked_cache(keys: torch.Tensor, values: torch.Tensor) -> Any:
    """A one-row transformers cache whose layer l holds keys[l] and values[l] ([layers, kv_heads, length,
    dim], contiguous, one dtype) as [1, kv_heads, length, dim] views: what a model call's cache holds,
    and `stacked` gives back the two tensors, so a prefix goes into every layer's buffer in one copy."""
    cache = _structure_copy(empty_cache(keys.shape[0], keys.dtype, keys.device))
    views = iter(t[None] for pair in zip(keys, values, strict=True) for t in pair)
    map_cache(cache, lambda _: next(views))
    return cache


def stacked(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The keys and values [layers, kv_heads, length, dim] that a one-row cache's layers (`cache_tensors`)
    lie in, one after the other in one block of memory (`stacked_cache` made it), or None. Read from the
    tensors' addresses: tensors made under inference mode do not record what they are views of."""
    found = []
    for part in (0, 1):
        tensors = [pair[part] for pair in pairs]
        if not tensors:
            return None
        first = tensors[0]
        storage, step = first.untyped_storage().data_ptr(), first.numel() * first.element_size()
        for layer, t in enumerate(tensors):
            if (t.shape != first.shape or first.shape[0] != 1 or not t.is_contiguous()
                    or t.untyped_storage().data_ptr() != storage or t.data_ptr() != first.data_ptr() + layer * step):  # fmt: skip
                return None
        found.append(first.as_strided((len(tensors), *first.shape[1:]), (first.numel(), *first.stride()[1:])))
    return found[0], found[1]


def cache_bytes(cache: Any) -> int:
    return sum(t.numel() * t.element_size() for pair in cache_tensors(cache) for t in pair)


def _structure_copy(cache: Any) -> Any:
    """A copy of the cache's structure (the layer objects, or the lists of the older layout) whose
    tensors can be replaced: the model appends to it without touching the original."""
    new = copy.copy(cache)
    if getattr(cache, "layers", None) is not None:
        new.layers = [copy.copy(layer) for layer in cache.layers]
    elif not hasattr(cache, "key_cache"):
        raise TypeError(f"unsupported cache type {type(cache).__name__}")
    return new


def expanded(cache: Any, rows: int) -> Any:
    """A new cache holding `rows` copies of a one-row cache, which stays as it was."""
    new = _structure_copy(cache)
    if rows == 1:
        map_cache(new, lambda t: t.clone())
    else:
        map_cache(new, lambda t: t.expand(rows, *t.shape[1:]).contiguous())
    return new


def gathered(parts: list[tuple[Any | None, int, int]]) -> Any:
    """A new cache for rows that start from different prefixes: `parts` are (one-row cache or None,
    its length, how many rows start from it), in row order. Each row holds its prefix at the end of
    the cache's width (the longest prefix), zeros before it, which the attention mask hides."""
    template = next(cache for cache, _, _ in parts if cache is not None)
    width = max(length for _, length, _ in parts)
    rows = sum(count for _, _, count in parts)
    sources = [
        [t for pair in cache_tensors(cache) for t in pair] if cache is not None else None for cache, _, _ in parts
    ]
    slot = itertools.count()

    def fill(t: torch.Tensor) -> torch.Tensor:
        i = next(slot)
        out = t.new_zeros((rows, *t.shape[1:-2], width, t.shape[-1]))
        start = 0
        for source, (_, length, count) in zip(sources, parts, strict=True):
            if source is not None and length:
                out[start : start + count, ..., width - length :, :] = source[i]
            start += count
        return out

    new = _structure_copy(template)
    map_cache(new, fill)
    return new


class PrefixStore:
    """One-row caches of the prompt prefixes recent batches shared, least recently used dropped first.

    HELM gives every instance of a run the same instructions and in-context examples, so the batches
    of a run all begin with the same hundreds of tokens; several runs at once interleave a few such
    prefixes. Reusing a stored prefix changes no result: it holds exactly what a fresh one-row
    prefill of the same tokens computes.
    """

    def __init__(self, max_bytes: int, max_entries: int = 8):
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, ...], tuple[Any, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, tokens: list[int]) -> tuple[int, Any] | None:
        """The longest stored prefix of `tokens`: (its length, its one-row cache), or None."""
        best: tuple[int, ...] | None = None
        for key in self._entries:
            n = len(key)
            if n <= len(tokens) and (best is None or n > len(best)) and tuple(tokens[:n]) == key:
                best = key
        if best is None:
            return None
        self._entries.move_to_end(best)
        return len(best), self._entries[best][0]

    def add(self, tokens: list[int], cache: Any) -> None:
        key = tuple(tokens)
        size = cache_bytes(cache)
        if key in self._entries or size > self.max_bytes:
            return
        while self._entries and (self.bytes + size > self.max_bytes or len(self._entries) >= self.max_entries):
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
        self._entries[key] = (cache, size)
        self.bytes += size

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
