"""Packed single-token batches replayed as CUDA graphs, one graph per shape bucket.

A small model's packed batch is bound by the host: at 1.1 B a batch of ~40 rows is ~13 ms of GPU
kernels but 30-37 ms of Python and ~400 kernel launches, more under HELM's load (benchmarks.md,
sessions 9 and 10). Here the forward runs at a few fixed shapes: the packed sequence is padded to a
token bucket (steps of an eighth to a quarter), the rows to a power of two, the longest row to a
power of two, and the groups (runs sharing a prefix) always have room for `MAX_GROUPS`; each shape's
forward is captured once and replayed for every later batch of that shape. Only the inputs are copied
in (two transfers) and, when the batch's prefixes are not the ones already there, the prefixes' keys
and values.

Results are the packed forward's: the same modules (embedding, rotary, the decoder layers as fused.py
runs them, norm, head) over the same tokens; the padding only adds rows of its own, which no real
token attends to, and its results are dropped. What differs is the padded length the matrix products
see (their kernels may sum in another order, as for any other batch size).

Batches it does not take (no stored prefix at all, more than `MAX_GROUPS` prefixes, more tokens than
`MAX_TOKENS`) run the plain packed forward; so does everything if a capture fails.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from evaluation.engine.server import fused, packed, static_decode

log = logging.getLogger(__name__)

MIN_TOKENS = 256
MAX_TOKENS = 32768
# Groups with a stored prefix a batch may hold; one more holds the rows without one and the padding.
# Every shape has room for all: a group with no tokens costs only its kernels' empty blocks, while each
# other shape is one more capture.
MAX_GROUPS = 7
GROUPS = MAX_GROUPS + 1
# Floors for the same reason: most multiple-choice batches have 16-64 rows of under 256 tokens.
MIN_ROWS = 64
MIN_LONGEST = 256
MAX_GRAPHS = 32
# Models up to this size are host-bound (session 10: a 1.1 B batch's host time about its GPU time);
# larger ones spend most of a batch on the GPU already and keep the track's memory for their weights.
AUTO_MAX_PARAMETERS = 3e9


def token_bucket(n: int) -> int:
    """The padded length for n tokens: 256 · 2^k · (1, 1.25, 1.5 or 1.75), so at most a fifth is padding."""
    base = MIN_TOKENS
    while True:
        for step in (4, 5, 6, 7):
            if n <= base * step // 4:
                return base * step // 4
        base *= 2


def power_bucket(n: int, low: int) -> int:
    b = low
    while b < n:
        b *= 2
    return b


@dataclass(frozen=True)
class Shape:
    tokens: int
    rows: int
    longest: int


def shape_for(lengths: list[int], groups: int) -> Shape | None:
    """The bucket of a batch of rows with these own lengths in this many prefix groups, or None."""
    total = sum(lengths)
    if not lengths or not 0 < groups <= MAX_GROUPS or total > MAX_TOKENS:
        return None
    tokens = token_bucket(total)
    longest = power_bucket(max(lengths), MIN_LONGEST)
    padding_rows = -(-(tokens - total) // longest)
    return Shape(tokens, power_bucket(len(lengths) + padding_rows, MIN_ROWS), longest)


def layout(shape: Shape, lengths: list[int], group_ends: list[int], prefix_lengths: list[int]) -> list[int]:
    """The boundaries a StaticPlan reads, as one list: own [rows + 1], queries [GROUPS + 1], keys
    [GROUPS + 1]. The padding after the real tokens is cut into rows of at most `longest` tokens; after
    the groups with a prefix (`group_ends`, `prefix_lengths`) one without runs to the end: the rows
    after the last group's end, and the padding."""
    own = [0]
    for n in lengths:
        own.append(own[-1] + n)
    while own[-1] < shape.tokens:
        own.append(min(own[-1] + shape.longest, shape.tokens))
    own += [shape.tokens] * (shape.rows + 1 - len(own))
    queries = [0, *group_ends, shape.tokens]
    queries += [shape.tokens] * (GROUPS + 1 - len(queries))
    keys = [0]
    for n in prefix_lengths:
        keys.append(keys[-1] + n)
    keys += [keys[-1]] * (GROUPS + 1 - len(keys))
    return own + queries + keys


class _Graph:
    """One shape's inputs at fixed addresses, its plan, its graph and its logits."""

    def __init__(self, shape: Shape, device: torch.device, prefix_keys, prefix_values, capacity: int):
        self.shape = shape
        t, r, g = shape.tokens, shape.rows, GROUPS
        self.longs = torch.zeros(2 * t + r, dtype=torch.long, device=device)  # ids, positions, kept rows
        self.ids, self.positions = self.longs[:t].view(1, t), self.longs[t : 2 * t].view(1, t)
        self.keep = self.longs[2 * t :]
        self.cuts = torch.zeros(r + 1 + 2 * (g + 1), dtype=torch.int32, device=device)
        self.plan = packed.StaticPlan(
            own=self.cuts[: r + 1],
            queries=self.cuts[r + 1 : r + g + 2],
            keys=self.cuts[r + g + 2 :],
            max_own=shape.longest,
            max_queries=t,
            max_keys=capacity,
            prefix_keys=prefix_keys,
            prefix_values=prefix_values,
        )
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def fill(self, ids: list[int], positions: list[int], keep: list[int], cuts: list[int]) -> None:
        pad = self.shape.tokens - len(ids)
        kept = keep + [0] * (self.shape.rows - len(keep))
        self.longs.copy_(torch.tensor(ids + [0] * pad + positions + [0] * pad + kept), non_blocking=True)
        self.cuts.copy_(torch.tensor(cuts, dtype=torch.int32), non_blocking=True)
        r, g = self.shape.rows, GROUPS
        self.plan.host = (cuts[: r + 1], cuts[r + 1 : r + g + 2], cuts[r + g + 2 :])


def setting() -> str:
    return os.environ.get("ENGINE_PACKED_GRAPHS", "auto").strip().lower()


def enabled(model: Any, device: torch.device) -> bool:
    """`ENGINE_PACKED_GRAPHS`: auto (a GPU, half precision, at most AUTO_MAX_PARAMETERS), 1 (anywhere;
    without a GPU the same fixed shapes run without graphs: the tests) or 0."""
    value = setting()
    if value in ("0", "off", "false") or not static_decode.supports(model):
        return False
    if value in ("1", "on", "true"):
        return True
    dtype = next(model.parameters()).dtype
    small = sum(p.numel() for p in model.parameters()) <= AUTO_MAX_PARAMETERS
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and small


class PackedGraphs:
    """Runs packed single-token forwards at bucketed shapes, each shape's captured once (on a GPU)."""

    def __init__(self, model: Any, *, use_graphs: bool):
        self.model = model
        self.inner = model.model
        self.device = next(model.parameters()).device
        self.use_graphs = use_graphs
        self.graphs: OrderedDict[Shape, _Graph] = OrderedDict()
        self.failed = False
        self.captures = 0
        self.replays = 0
        self.served = 0  # batches run here
        self.prefix_keys: list[torch.Tensor] = []
        self.prefix_values: list[torch.Tensor] = []
        self.capacity = 0
        self._loaded: list[torch.Tensor] = []  # the first layer's keys of each prefix the buffers hold
        self._pool = None
        self._stream: torch.cuda.Stream | None = None

    def release(self) -> None:
        """Drop every graph and buffer (after running out of memory)."""
        self.graphs.clear()
        self.prefix_keys, self.prefix_values, self.capacity, self._loaded = [], [], 0, []
        self._pool = None

    # --- the prefixes -------------------------------------------------------------------------

    def _load_prefixes(self, layers: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> list[int]:
        """Copy each group's prefix (per layer (keys, values) [1, kv_heads, length, dim]) into the
        buffers, unless they hold these already; returns the prefixes' lengths."""
        lengths = [tensors[0][0].shape[-2] for tensors in layers]
        if sum(lengths) > self.capacity:
            # Room for about twice what this batch needs; graphs read the old buffers, so they go.
            self.release()
            self.capacity = -(-2 * sum(lengths) // 256) * 256
            k, v = layers[0][0]
            shape_k = (self.capacity, k.shape[1], k.shape[3])
            shape_v = (self.capacity, v.shape[1], v.shape[3])
            count = len(layers[0])
            self.prefix_keys = [torch.empty(shape_k, dtype=k.dtype, device=k.device) for _ in range(count)]
            self.prefix_values = [torch.empty(shape_v, dtype=v.dtype, device=v.device) for _ in range(count)]
        firsts = [tensors[0][0] for tensors in layers]  # a stored prefix keeps its tensors
        if len(firsts) != len(self._loaded) or any(a is not b for a, b in zip(firsts, self._loaded, strict=False)):
            start = 0
            for tensors, n in zip(layers, lengths, strict=True):
                for (k, v), bk, bv in zip(tensors, self.prefix_keys, self.prefix_values, strict=True):
                    bk[start : start + n].copy_(k[0].transpose(0, 1))
                    bv[start : start + n].copy_(v[0].transpose(0, 1))
                start += n
            self._loaded = firsts
        return lengths

    # --- one forward ----------------------------------------------------------------------------

    def _forward(self, g: _Graph) -> torch.Tensor:
        """The model's own modules over the padded sequence, as LlamaModel.forward calls them."""
        hidden = self.inner.embed_tokens(g.ids)
        position_embeddings = self.inner.rotary_emb(hidden, g.positions)
        g.plan.layers_seen.clear()
        with packed.active(self.model, g.plan):
            if fused.runs_fused(self.model) and fused.plain_rms_norm(self.inner.norm):
                pending = None  # each layer's residual sum is made by the next one's norm (static_decode.py)
                for layer in self.inner.layers:
                    pending, hidden = fused.layer_parts(
                        layer, hidden, pending, None, g.positions, None, None, position_embeddings
                    )
                hidden = fused.final_norm(self.inner.norm, pending, hidden)
            else:
                for layer in self.inner.layers:
                    out = layer(hidden, attention_mask=None, position_ids=g.positions,
                                position_embeddings=position_embeddings)  # fmt: skip
                    hidden = out[0] if isinstance(out, tuple) else out
                hidden = self.inner.norm(hidden)
        return self.model.lm_head(hidden[0, g.keep])

    def _capture(self, g: _Graph, warm_up: bool) -> None:
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        if self._pool is None:  # one pool for every shape's graph: they never run at the same time
            self._pool = torch.cuda.graph_pool_handle()
        self._stream.wait_stream(torch.cuda.current_stream())
        # Not torch.cuda.graph(): it collects garbage and empties the allocator's cache each time.
        with torch.cuda.stream(self._stream):
            if warm_up:  # cuBLAS's workspace on this stream, Triton's compiles for these shapes
                self._forward(g)
            graph = torch.cuda.CUDAGraph()
            graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")
            try:
                g.logits = self._forward(g)
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(self._stream)
        g.graph = graph
        self.captures += 1

    def _graph(self, shape: Shape) -> _Graph:
        g = self.graphs.get(shape)
        if g is not None:
            self.graphs.move_to_end(shape)
            return g
        while len(self.graphs) >= MAX_GRAPHS:
            self.graphs.popitem(last=False)
        g = _Graph(shape, self.device, self.prefix_keys, self.prefix_values, self.capacity)
        self.graphs[shape] = g
        return g

    def forward(self, ids: list[int], positions: list[int], lengths: list[int], spans: list, keep: list[int]):
        """Each kept row's logits (fp32, [rows, vocab]) from the packed sequence `ids`, or None when this
        batch is not one it takes. `spans`: (first token, end token, prefix cache) of each group, as
        packed.PackedPlan takes them; `keep`: each row's last token, in the caller's row order."""
        if self.failed:
            return None
        shape = shape_for(lengths, len(spans))
        if shape is None:
            return None
        prefix_lengths = self._load_prefixes([tensors for _, _, tensors in spans])
        g = self._graph(shape)
        g.fill(ids, positions, keep, layout(shape, lengths, [end for _, end, _ in spans], prefix_lengths))
        if not self.use_graphs:
            logits = self._forward(g)
        else:
            if g.graph is None and not self._captured(g):
                return None
            g.graph.replay()
            logits = g.logits
            self.replays += 1
        if len(g.plan.layers_seen) != len(self.inner.layers):
            log.warning("packed attention was not used by every layer; packed batches run without graphs")
            self.failed = True
            return None
        self.served += 1
        return logits[: len(keep)].float()

    def _captured(self, g: _Graph) -> bool:
        """Capture g's graph (the first capture, or a retry, after a warm-up forward); False if it cannot be."""
        error: Exception | None = None
        for warm_up in (True,) if self.captures == 0 else (False, True):
            try:
                self._capture(g, warm_up)
                return True
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:  # a model or torch the graph cannot hold: packed batches still run
                error = e
        log.warning("CUDA graph capture of a packed batch failed; packed batches run without graphs", exc_info=error)
        self.failed = True
        self.graphs.pop(g.shape, None)
        return False
