"""Single-token batches as one packed sequence: every row's own tokens side by side in one forward
of one row, each token attending to its run's prefix and to the earlier tokens of its own row.

A padded batch pads every row to its longest question and copies its run's prefix cache into every
row, then attends over prefix and question together. Packed, the forward holds only the rows' own
tokens, nothing is padded or copied, and attention runs in two parts whose results are merged by
their log-sum-exps (exactly the softmax over both sets of keys):

- each run's queries, all of its rows at once, against its stored prefix's keys and values;
- each row's queries against its own keys (causal).

On a GPU in half precision both parts are PyTorch's varlen flash kernel over the sequence as it is;
elsewhere (the CPU, fp32) rows of similar length are padded together for their own part.

Only models whose attention goes through transformers' `AttentionInterface` can be served so
(`supports`), and a forward whose layers did not all call us is refused (`PackedPlan.layers_seen`).
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from evaluation.engine.server import fused
from evaluation.engine.server.attention import ENGINE_ATTENTION

log = logging.getLogger(__name__)

PACKED_ATTENTION = "engine_packed"
# Architectures whose attention is plain softmax attention over rotary-embedded keys, called through
# the interface with the module's own scaling: nothing of theirs is left out here.
MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}
_registered: bool | None = None
_active: PackedPlan | StaticPlan | None = None  # the plan of the forward in flight (one model thread owns it)


@dataclass
class Bucket:
    """Rows attended to together in their own part: `index` [rows, width] packed token positions of
    each row, on the right padded with its last token (causal attention never reaches the padding
    from a real token); `keep` the flat positions in `index` that are real tokens, `targets` theirs
    in the packed sequence."""

    index: torch.Tensor
    keep: torch.Tensor
    targets: torch.Tensor


@dataclass
class PackedPlan:
    """What each token of the packed sequence sees. `lengths`: each row's own tokens, rows side by
    side in packed order; `groups`: (first token, end token, per-layer (keys, values) of the prefix
    those tokens attend to), in packed order, the groups with a prefix first (rows without one follow
    them and attend only to themselves)."""

    lengths: list[int]
    groups: list[tuple[int, int, list[tuple[torch.Tensor, torch.Tensor]]]]
    device: torch.device
    layers_seen: set[int] = field(default_factory=set)
    _buckets: list[Bucket] | None = None
    _varlen: dict | None = None

    @property
    def buckets(self) -> list[Bucket]:
        if self._buckets is None:
            self._buckets = buckets_for(self.lengths, self.device)
        return self._buckets

    @property
    def varlen(self) -> dict:
        """Sequence boundaries for the varlen flash kernel: each row's own tokens, and each group's
        tokens against its prefix."""
        if self._varlen is None:
            prefixes = [prefix[0][0].shape[-2] for _, _, prefix in self.groups]
            starts = [0, *itertools.accumulate(self.lengths)]
            q_starts = [0, *(end for _, end, _ in self.groups)]
            k_starts = [0, *itertools.accumulate(prefixes)]
            # One copy to the device for all four (each separate copy would wait for the GPU's queue).
            flat = torch.tensor(starts + q_starts + k_starts, dtype=torch.int32).to(self.device, non_blocking=True)
            a, b = len(starts), len(starts) + len(q_starts)
            self._varlen = {
                "own": (flat[:a], max(self.lengths)),
                "queries": (flat[a:b], max((end - start for start, end, _ in self.groups), default=0)),
                "keys": (flat[b:], max(prefixes, default=0)),
                "prefix_tokens": q_starts[-1],
            }
        return self._varlen


def buckets_for(lengths: list[int], device: torch.device) -> list[Bucket]:
    """Rows of similar length padded together: a bucket holds lengths up to twice its shortest (plus
    a little), so padding at most about doubles a bucket's work, in a handful of buckets."""
    starts, position = [], 0
    for n in lengths:
        starts.append(position)
        position += n
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    buckets: list[Bucket] = []
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and lengths[order[j]] <= 2 * lengths[order[i]] + 8:
            j += 1
        rows = order[i:j]
        width = lengths[rows[-1]]
        index, keep, targets = [], [], []
        for k, row in enumerate(rows):
            n, start = lengths[row], starts[row]
            index.append([start + min(p, n - 1) for p in range(width)])
            keep.extend(range(k * width, k * width + n))
            targets.extend(range(start, start + n))
        buckets.append(Bucket(*(torch.tensor(x, device=device) for x in (index, keep, targets))))
        i = j
    return buckets


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None):
    """Softmax attention with its log-sum-exp: q [b, h, n, d], k and v [b, h, m, d] -> (out like q,
    lse [b, h, n] fp32). Causal: query i sees keys up to i (n == m here)."""
    if q.is_cuda:
        if q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2]
            return out, lse
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, None, True, 0.0, causal, scale=scale
        )[:2]
        return out, lse[..., : q.shape[-2]]
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
    return out, lse


# PyTorch's varlen flash kernel for half-precision models on a GPU; off if this torch's signature
# differs (or for comparisons: benchmarks/packed_batches.py), the portable path then serves.
varlen_enabled = True


def _varlen_usable(q: torch.Tensor) -> bool:
    return (
        varlen_enabled
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 256
        and hasattr(torch.ops.aten, "_flash_attention_forward")
    )


def _flash_varlen(q, k, v, cu_q, max_q, cu_k, max_k, causal: bool, scale):
    """PyTorch's flash kernel over sequences laid side by side: q [tokens, heads, dim], k and v
    [keys, kv_heads, dim] (grouped-query heads read their key/value head, as repeat_kv would), sequence
    i's queries cu_q[i]:cu_q[i+1] against its keys cu_k[i]:cu_k[i+1]. Returns (out like q, lse [tokens, heads])."""
    out, lse = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False, scale=scale
    )[:2]
    if lse.shape[0] != q.shape[0]:  # flash's varlen layout is [heads, tokens]
        lse = lse.transpose(0, 1)
    return out, lse


def _varlen_attention(plan: PackedPlan, layer: int, query, key, value, scaling) -> torch.Tensor:
    """Two varlen flash calls: every row against its own tokens (causal), then every group's tokens
    against its prefix; no copies of the rows' tokens, no padding."""
    q, k, v = query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1)  # [tokens, heads, dim]
    cuts = plan.varlen
    out, lse = _flash_varlen(q, k, v, *cuts["own"], *cuts["own"], True, scaling)
    n = cuts["prefix_tokens"]
    if n:
        keys = torch.cat([prefix[layer][0][0].transpose(0, 1) for _, _, prefix in plan.groups])
        values = torch.cat([prefix[layer][1][0].transpose(0, 1) for _, _, prefix in plan.groups])
        pre, pre_lse = _flash_varlen(q[:n], keys, values, *cuts["queries"], *cuts["keys"], False, scaling)
        fused.merge_into(out[:n], lse[:n], pre, pre_lse)
    return out[None]


def _bucketed_attention(plan: PackedPlan, layer: int, query, key, value, scaling) -> torch.Tensor:
    """Any device and dtype: rows of similar length padded together for their own part, each group's
    queries against its prefix as query positions of its key/value heads."""
    q, k, v = query[0], key[0], value[0]
    heads, total, dim = q.shape
    kv_heads = k.shape[0]
    group = heads // kv_heads
    out = torch.empty((heads, total, dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((heads, total), dtype=torch.float32, device=q.device)
    for bucket in plan.buckets:
        rows, width = bucket.index.shape
        qb = q[:, bucket.index].transpose(0, 1)  # [rows, heads, width, dim]
        kb = k[:, bucket.index].transpose(0, 1)
        vb = v[:, bucket.index].transpose(0, 1)
        if group > 1:  # a row's own keys are few: copying them per query head costs little
            kb, vb = kb.repeat_interleave(group, dim=1), vb.repeat_interleave(group, dim=1)
        ob, lb = attend(qb.contiguous(), kb.contiguous(), vb.contiguous(), True, scaling)
        out[:, bucket.targets] = ob.transpose(0, 1).reshape(heads, rows * width, dim)[:, bucket.keep]
        lse[:, bucket.targets] = lb.transpose(0, 1).reshape(heads, rows * width)[:, bucket.keep]
    for start, end, prefix in plan.groups:
        keys, values = prefix[layer]  # [1, kv_heads, prefix, dim], read once for all the group's rows
        n = end - start
        # Query head h attends with key/value head h // group, as repeat_kv does: the group's query
        # heads become query positions of one call over that key/value head.
        qg = q[:, start:end].reshape(1, kv_heads, group * n, dim)
        pre, pre_lse = attend(qg, keys, values, False, scaling)
        pre, pre_lse = pre.reshape(heads, n, dim), pre_lse.reshape(heads, n)
        out[:, start:end] = fused.merge_torch(out[:, start:end], lse[:, start:end], pre, pre_lse)
    return out.transpose(0, 1)[None]


@dataclass
class StaticPlan:
    """A packed forward at fixed shapes, for a CUDA graph (packed_graphs.py): every tensor here keeps its
    address from one batch to the next, only their contents change. The sequence is padded to a fixed
    token count, the padding split into rows of its own; rows beyond the batch's are empty. `own`
    [rows + 1]: each row's boundaries; `queries` and `keys` [groups + 1]: each group's tokens and its
    prefix's rows in `prefix_keys` / `prefix_values` (one [capacity, kv_heads, dim] buffer per layer).
    The last group has no prefix: the rows without one and the padding; groups beyond the batch's are
    empty. `max_*`: the kernels' bounds (fixed, so the launch grids are). `host`: the same boundaries
    as lists, for the portable path (the CPU)."""

    own: torch.Tensor
    queries: torch.Tensor
    keys: torch.Tensor
    max_own: int
    max_queries: int
    max_keys: int
    prefix_keys: list[torch.Tensor]
    prefix_values: list[torch.Tensor]
    host: tuple[list[int], list[int], list[int]] = ([], [], [])
    layers_seen: set[int] = field(default_factory=set)
    # A forward whose keys and values are kept (PackedGraphs.prefix_cache, a decoding batch's prefill):
    # each layer's rotated keys and values [tokens, kv_heads, dim] are written here, as a cache keeps them.
    kv_out: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def attend(self, layer: int, query, key, value, scaling) -> torch.Tensor:
        if self.kv_out is not None:
            self.kv_out[0][layer].copy_(key[0].transpose(0, 1))
            self.kv_out[1][layer].copy_(value[0].transpose(0, 1))
        if not _varlen_usable(query):
            return _bucketed_attention(self._portable(layer), layer, query, key, value, scaling)
        q, k, v = query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1)  # [tokens, heads, dim]
        out, lse = _flash_varlen(q, k, v, self.own, self.max_own, self.own, self.max_own, True, scaling)
        if not self.prefix_keys:
            return out[None]
        keys, values = self.prefix_keys[layer], self.prefix_values[layer]
        pre, pre_lse = _flash_varlen(
            q, keys, values, self.queries, self.max_queries, self.keys, self.max_keys, False, scaling
        )
        # Flash gives a query with no keys out = 0 and lse = +inf; -inf weighs that part exactly 0.
        pre_lse.masked_fill_(pre_lse.isposinf(), float("-inf"))
        fused.merge_into(out, lse, pre, pre_lse)
        return out[None]

    def _portable(self, layer: int) -> PackedPlan:
        """The same batch as a PackedPlan for the portable path (the CPU): the non-empty rows, and each
        group with keys reading its prefix from this layer's buffers."""
        own, queries, keys = (list(itertools.pairwise(cuts)) for cuts in self.host)
        groups = [
            (
                a,
                b,
                {
                    layer: tuple(
                        t[layer][c:d].transpose(0, 1)[None].contiguous() for t in (self.prefix_keys, self.prefix_values)
                    )
                },
            )
            for (a, b), (c, d) in zip(queries, keys, strict=True)
            if b > a and d > c
        ]
        return PackedPlan([b - a for a, b in own if b > a], groups, self.own.device)


def packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention signature over the packed sequence: query [1, heads, T, dim], keys and
    values [1, kv_heads, T, dim] (the rows' own tokens, no cache); returns [1, T, heads, dim]."""
    global varlen_enabled
    plan = _active
    if plan is None or dropout:
        raise RuntimeError("packed attention outside a packed forward")
    layer = module.layer_idx
    plan.layers_seen.add(layer)
    if isinstance(plan, StaticPlan):
        return plan.attend(layer, query, key, value, scaling), None
    if _varlen_usable(query):
        try:
            return _varlen_attention(plan, layer, query, key, value, scaling), None
        except RuntimeError as e:  # this torch's flash kernel takes other arguments: the portable path
            if isinstance(e, torch.cuda.OutOfMemoryError):
                raise
            log.warning("varlen flash attention failed (%s); packed batches use the portable path", e)
            varlen_enabled = False
    return _bucketed_attention(plan, layer, query, key, value, scaling), None


def _no_mask(*args, **kwargs):
    return None  # packed attention needs no mask: the plan says what each token sees


def _register() -> bool:
    global _registered
    if _registered is None:
        try:
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface
        except ImportError:
            _registered = False
        else:
            AttentionInterface.register(PACKED_ATTENTION, packed_attention)
            AttentionMaskInterface.register(PACKED_ATTENTION, _no_mask)
            _registered = True
    return _registered


def supports(model: Any) -> bool:
    """Whether `model`'s single-token batches can be packed (else they are padded)."""
    config = model.config
    if getattr(config, "model_type", None) not in MODEL_TYPES:
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", ENGINE_ATTENTION):
        return False
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return False
    return _register()


def max_length(model: Any) -> int | None:
    """Longest row (prefix included) packed attention serves: a sliding window it does not apply."""
    config = model.config
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True):
        return int(window)
    return None


@contextmanager
def active(model: Any, plan: PackedPlan | StaticPlan) -> Iterator[None]:
    global _active
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = PACKED_ATTENTION
    _active = plan
    try:
        yield
    finally:
        _active = None
        config._attn_implementation = previous
