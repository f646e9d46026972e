"""Packed single-token batches cut into chunks of a few fixed sizes, each size's forward captured once
as a CUDA graph and replayed.

A small model's packed batch is bound by the host: at 1.1 B a batch of ~40 rows is ~13 ms of GPU
kernels but 30-37 ms of Python and ~400 kernel launches, more under HELM's load (benchmarks.md,
sessions 9 and 10). Here a batch's rows are cut into chunks of whole rows of `CHUNKS` tokens (the
last one padded); a chunk's shape also fixes its rows (padding rows included), its longest row (a
power of two) and room for `MAX_GROUPS` prefixes. Each chunk size's forward is captured at the
server's warm-up (`prepare`; another shape, the first time a batch needs it) and replayed for every
later chunk of that shape: a handful of captures, whatever the batch sizes (session 11: one graph per
padded batch size captured 20-39 an evaluation, and cost what the replays saved). Only the
inputs are copied in (two transfers a chunk) and, when the batch's prefixes are not the ones already
there, the prefixes' keys and values.

Results are the packed forward's: the same modules (embedding, rotary, the decoder layers as fused.py
runs them, norm, head) over the same tokens; rows attend only to their own tokens and their prefix,
so cutting between rows changes nothing; the padding only adds rows of its own, which no real token
attends to, and its results are dropped. What differs is the length the matrix products see (their
kernels may sum in another order, as for any other batch size).

Batches it does not take (no stored prefix at all, more than `MAX_GROUPS` prefixes, a row longer than
the largest chunk) run the plain packed forward; so does everything if a capture fails.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from evaluation.engine.server import cuda_graphs, fused, kv_cache, packed, static_decode
from evaluation.engine.server.attention import attention_shape
from evaluation.engine.server.staging import Staging
from evaluation.engine.server.switches import switch

log = logging.getLogger(__name__)

# Every batch is cut into chunks of these token counts (whole rows each, the last chunk padded), and
# each size's forward is captured once: a handful of captures an evaluation, whatever its batch sizes.
CHUNKS = (256, 512, 1024, 2048, 4096, 8192)
# A chunk is taken at the size that holds the rest of the batch when the rest fills at least this much
# of it; else half that size now, and the rest after.
FULL = 0.75
# Groups with a stored prefix a chunk may hold; one more holds the rows without one and the padding.
# Every shape has room for all: a group with no tokens costs only its kernels' empty blocks.
MAX_GROUPS = 7
GROUPS = MAX_GROUPS + 1
# The longest row a shape's own-tokens kernel reaches: a power of two, at least this (most
# multiple-choice questions are shorter), so that nearly every chunk of a size has one shape.
MIN_LONGEST = 512
# The same for a decoding batch's prefill (a shape that keeps its keys and values): its rows' own
# tokens are what follows their shared prefix, a few dozen. The own-token kernel's grid is longest / 128
# blocks for every row and head, most of them empty: at 512, 63 µs a layer for 50 rows of a 2,048-token
# chunk on an H100 (session 27's trace).
KV_MIN_LONGEST = 128
# Prefix tokens `prepare` makes room for: a few runs' few-shot prefixes.
PREPARED_CAPACITY = 4096
MAX_GRAPHS = 32
# `ENGINE_GRAPH_PREFIX_FILLS=0`: a few-shot prefix no batch stored is prefilled by a model call of its
# own; by default by a replay that keeps its keys and values (PackedGraphs.prefix_caches). The warm-up
# captures the fill shapes of prefixes up to these sizes (most few-shot prefixes of HELM's scenarios).
fill_prefixes = os.environ.get("ENGINE_GRAPH_PREFIX_FILLS", "1") != "0"
FILL_SIZES = (256, 512, 1024)
# New prefixes are filled side by side, as a batch's rows, up to this many tokens a replay.
JOINT_FILL = FILL_SIZES[1]
# Models up to this size are host-bound (session 10: a 1.1 B batch's host time about its GPU time);
# larger ones spend most of a batch on the GPU already and keep the track's memory for their weights.
AUTO_MAX_PARAMETERS = 3e9


def rows_for(tokens: int) -> int:
    """Rows a chunk of `tokens` holds, its padding rows included."""
    return max(64, tokens // 16)


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
    kv: bool = False  # its keys and values kept (a prefix's fill, a decoding batch's prefill)
    # A prefix's fill: no prefix to attend to and no logits (session 27's trace: the prefix attention
    # 3.7 µs and its merge 2.5 µs a layer, and the head 52 µs, ~0.19 ms of a 1.1 B fill's 2.5 ms on an H100).
    fill: bool = False


@dataclass(frozen=True)
class Chunk:
    shape: Shape
    first: int  # its rows, first to end (exclusive), in packed order
    end: int


def _size_for(rest: int, first_row: int) -> int:
    size = next((c for c in CHUNKS if c >= rest), CHUNKS[-1])
    if rest < FULL * size and size > CHUNKS[0]:
        size //= 2
    while size < first_row:
        size *= 2
    return size


def _fill_shape(tokens: int) -> Shape | None:
    """The shape a prefix of `tokens` is filled in alone (None past the largest chunk)."""
    chunks = _fill_chunks([tokens])
    return chunks[0].shape if chunks else None


def _fill_chunks(lengths: list[int]) -> list[Chunk] | None:
    """The chunks prefixes of these lengths are filled in, side by side: consecutive ones together up to
    JOINT_FILL tokens, whose chunks are fill shapes the warm-up captures (256 and 512 tokens); a longer
    one alone, in its own fill shape. None for one longer than the largest chunk. Their shapes keep
    their keys and values and are fills (`Shape.fill`)."""
    groups: list[list[int]] = []
    total = JOINT_FILL + 1
    for i, n in enumerate(lengths):
        if total + n > JOINT_FILL:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += n
    chunks = []
    for group in groups:
        found = chunks_for([lengths[i] for i in group])
        if found is None:
            return None
        chunks += [Chunk(dataclasses.replace(c.shape, kv=True, fill=True), c.first + group[0], c.end + group[0])
                   for c in found]  # fmt: skip
    return chunks


def chunks_for(lengths: list[int], low: int = MIN_LONGEST) -> list[Chunk] | None:
    """Rows (their own token counts, in packed order) cut into chunks, or None for a row longer than
    the largest chunk. `low`: the least `longest` of their shapes."""
    if not lengths or max(lengths) > CHUNKS[-1]:
        return None
    chunks, i, rest = [], 0, sum(lengths)
    while i < len(lengths):
        size = _size_for(rest, lengths[i])
        rows, tokens, j = rows_for(size), 0, i
        # Whole rows while they fit, counting the padding rows (of `low` tokens at most) the rest needs.
        while j < len(lengths) and tokens + lengths[j] <= size:
            if j - i + 1 + -(-(size - tokens - lengths[j]) // low) > rows:
                break
            tokens += lengths[j]
            j += 1
        longest = power_bucket(max(lengths[i:j]), low)
        chunks.append(Chunk(Shape(size, rows, longest), i, j))
        rest -= tokens
        i = j
    return chunks


def layout(shape: Shape, lengths: list[int], group_ends: list[int], key_starts: list[int]) -> list[int]:
    """The boundaries a StaticPlan reads, as one list: own [rows + 1], queries [GROUPS + 1], keys
    [GROUPS + 1]. The padding after the real tokens is cut into rows of at most `longest` tokens. The
    groups with a prefix end at `group_ends`, their keys run from key_starts[i] to key_starts[i + 1];
    after them a group without keys runs to the end: the rows without a prefix, and the padding."""
    own = [0]
    for n in lengths:
        own.append(own[-1] + n)
    while own[-1] < shape.tokens:
        own.append(min(own[-1] + shape.longest, shape.tokens))
    own += [shape.tokens] * (shape.rows + 1 - len(own))
    queries = [0, *group_ends, shape.tokens]
    queries += [shape.tokens] * (GROUPS + 1 - len(queries))
    keys = key_starts + [key_starts[-1]] * (GROUPS + 1 - len(key_starts))
    return own + queries + keys


class _Graph:
    """One shape's inputs at fixed addresses, its plan, its graph and its logits."""

    def __init__(self, shape: Shape, device: torch.device, prefix_keys, prefix_values, capacity: int, kv=None):
        self.shape = shape
        # A shape that keeps its keys and values: each [layers, tokens, kv_heads, dim], every layer's
        # part a view (the plan writes them by layer, a decoding prefill's sink reads them at once).
        self.kv = kv
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
            kv_out=tuple(list(t.unbind(0)) for t in kv) if kv is not None else None,
        )
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def fill(self, ids: list[int], positions: list[int], keep: list[int], cuts: list[int], staging: Staging) -> None:
        pad = array("q", bytes(8 * (self.shape.tokens - len(ids))))
        # Through an array: torch.tensor() of a list looks at every element of a 60-row batch's ~14,000
        # longs, inside the batch's time (benchmarks/packed_host.py gives the host's part of a batch).
        longs = array("q", ids)
        for part in (pad, positions, pad, keep, array("q", bytes(8 * (self.shape.rows - len(keep))))):
            longs.extend(part)
        staging.to_device(longs, torch.long, self.longs)
        staging.to_device(array("i", cuts), torch.int32, self.cuts)
        r, g = self.shape.rows, GROUPS
        self.plan.host = (cuts[: r + 1], cuts[r + 1 : r + g + 2], cuts[r + g + 2 :])


class _Steps:
    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []
        self._at = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.steps.append((name, round(1000 * (now - self._at), 2)))
        self._at = now


def enabled(model: Any, device: torch.device) -> bool:
    """`ENGINE_PACKED_GRAPHS`: auto (a GPU, half precision, at most AUTO_MAX_PARAMETERS), 1 (anywhere;
    without a GPU the same fixed shapes run without graphs: the tests) or 0."""
    on = switch("ENGINE_PACKED_GRAPHS")
    if on is False or not static_decode.supports(model):
        return False
    if on:
        return True
    dtype = next(model.parameters()).dtype
    small = sum(p.numel() for p in model.parameters()) <= AUTO_MAX_PARAMETERS
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and small


class PackedGraphs:
    """Runs packed single-token forwards chunk by chunk, each chunk shape's forward captured once (on a GPU)."""

    def __init__(self, model: Any, *, use_graphs: bool):
        self.model = model
        self.inner = model.model
        self.device = next(model.parameters()).device
        self.use_graphs = use_graphs
        self.graphs: OrderedDict[Shape, _Graph] = OrderedDict()
        self.failed = False
        self.capturer = cuda_graphs.Capturer(shared_pool=True)  # shapes never replay at the same time
        self.staging = Staging(self.device)  # the batches' inputs go through its pinned buffers
        self.served = 0  # batches run here
        self.prepared = 0  # graphs captured by `prepare`
        # Each layer's buffer is a view of one [layers, capacity, kv_heads, dim] tensor: a prefix is
        # copied into every layer at once.
        self.prefix_keys: list[torch.Tensor] = []
        self.prefix_values: list[torch.Tensor] = []
        self._stores: tuple[torch.Tensor, torch.Tensor] | None = None
        self.capacity = 0
        self._loaded: list[torch.Tensor] = []  # the first layer's keys of each prefix the buffers hold
        # The last batch's host milliseconds, step by step (the prefixes loaded, each chunk's inputs
        # filled and its replay launched, the rows put in order): where a slow launch waited.
        self.last_steps: list[tuple[str, float]] = []

    def release(self) -> None:
        """Drop every graph and buffer (after running out of memory)."""
        self.graphs.clear()
        self.prefix_keys, self.prefix_values, self.capacity, self._loaded = [], [], 0, []
        self._stores = None
        self.capturer.forget_pool()

    # --- the prefixes -------------------------------------------------------------------------

    def _load_prefixes(self, layers: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> list[int]:
        """Copy each group's prefix (per layer (keys, values) [1, kv_heads, length, dim]) into the
        buffers (in order, one after the other), unless they hold these already; returns the prefixes'
        lengths."""
        lengths = [tensors[0][0].shape[-2] for tensors in layers]
        if sum(lengths) > self.capacity:
            # Room for about twice what this batch needs; graphs read the old buffers, so they go.
            k, v = layers[0][0]
            self._allocate(-(-2 * sum(lengths) // 256) * 256, k.shape[1], k.shape[3], v.shape[3], k.dtype)
        firsts = [tensors[0][0] for tensors in layers]  # a stored prefix keeps its tensors
        if len(firsts) != len(self._loaded) or any(a is not b for a, b in zip(firsts, self._loaded, strict=False)):
            # Batches of different runs' rows load different prefixes, most batches under HELM's load
            # (session 19's profile). Stacked, a prefix's keys go into every layer's buffer in one
            # copy: four kernels a prefix instead of two a layer (44 for a 22-layer model).
            store_keys, store_values = self._stores
            start = 0
            for tensors, n in zip(layers, lengths, strict=True):
                # [layers, kv_heads, n, dim]: a replay's fill is stacked already (kv_cache.stacked_cache)
                stacked = kv_cache.stacked(tensors)
                if stacked is None:
                    stacked = [torch.stack([pair[part][0] for pair in tensors]) for part in (0, 1)]
                for store, part in zip((store_keys, store_values), stacked, strict=True):
                    store[:, start : start + n].copy_(part.transpose(1, 2))
                start += n
            self._loaded = firsts
        return lengths

    def _allocate(self, capacity: int, kv_heads: int, key_dim: int, value_dim: int, dtype: torch.dtype) -> None:
        self.release()
        self.capacity = capacity
        layers = len(self.inner.layers)
        keys = torch.empty(layers, capacity, kv_heads, key_dim, dtype=dtype, device=self.device)
        values = torch.empty(layers, capacity, kv_heads, value_dim, dtype=dtype, device=self.device)
        self._stores = (keys, values)
        self.prefix_keys, self.prefix_values = list(keys.unbind(0)), list(values.unbind(0))

    def prepare(self, capacity: int = PREPARED_CAPACITY, kv_chunks: bool = False) -> None:
        """Capture each chunk size's graph now (the server's warm-up, before any request), with room for
        `capacity` prefix tokens: the batches then pay for no capture unless a row is longer than
        MIN_LONGEST (KV_MIN_LONGEST in a decoding batch's prefill) or the prefixes outgrow the room. `kv_chunks`: each size's shape that keeps its keys
        and values too (decoding batches' prefills, ENGINE_GRAPH_DECODE_PREFILL)."""
        if fill_prefixes:  # what each filled prefix's cache is a copy of (kv_cache.stacked_cache)
            kv_cache.empty_cache(len(self.inner.layers), next(self.model.parameters()).dtype, self.device)
        if not self.use_graphs or self.failed:
            return
        _, kv_heads, head_dim = attention_shape(self.model.config)
        try:
            self._allocate(capacity, kv_heads, head_dim, head_dim, next(self.model.parameters()).dtype)
            shapes = [Shape(size, rows_for(size), MIN_LONGEST) for size in CHUNKS]
            if fill_prefixes:
                shapes += [_fill_shape(n) for n in FILL_SIZES]
            if kv_chunks:
                shapes += [Shape(size, rows_for(size), KV_MIN_LONGEST, kv=True) for size in CHUNKS]
            for shape in dict.fromkeys(shapes):  # a shape listed twice is captured once
                g = self._graph(shape)
                g.fill([], [], [], layout(g.shape, [], [], [0]), self.staging)  # all padding: only the shapes matter
                if not self._captured(g):
                    return
                self.prepared = self.captures
                self._warm(g)
        except torch.cuda.OutOfMemoryError:  # batches capture what they need, within what is left
            log.warning("no memory for the packed batches' graphs at warm-up; batches capture their own")
            self.release()
            torch.cuda.empty_cache()

    def _warm(self, g: _Graph) -> None:
        """What a batch would otherwise do the first time it uses this shape, each of which waits for the
        GPU's queued work: the graph's first replay (its upload) and room in the allocator for its logits
        in fp32 (a new block is a cudaMalloc); its inputs' pinned buffers were made by the fill before.
        Session 19: in 256-thread runs the first batches of a new size spent their whole time before
        their forward was launched, the GPU's earlier chunks included."""
        g.graph.replay()
        if self.device.type != "cuda" or g.shape.fill:
            return
        logits = torch.empty(g.shape.rows, self.model.config.vocab_size, dtype=torch.float32, device=self.device)
        torch.cuda.current_stream().synchronize()
        del logits

    # --- one forward ----------------------------------------------------------------------------

    def _forward(self, g: _Graph) -> torch.Tensor:
        """The model's own modules over the padded sequence, as LlamaModel.forward calls them (a fill:
        up to the last layer's keys and values; its last hidden state for logits, which nothing reads)."""
        hidden = self.inner.embed_tokens(g.ids)
        position_embeddings = self.inner.rotary_emb(hidden, g.positions)
        g.plan.layers_seen.clear()
        with packed.active(self.model, g.plan):
            parts = fused.runs_fused(self.model) and fused.plain_rms_norm(self.inner.norm)
            pending = None  # with `parts`, each layer's residual sum is made by the next one's norm (static_decode.py)
            for layer in self.inner.layers:
                if parts:
                    pending, hidden = fused.layer_parts(
                        layer, hidden, pending, None, g.positions, None, None, position_embeddings
                    )
                else:
                    out = layer(hidden, attention_mask=None, position_ids=g.positions,
                                position_embeddings=position_embeddings)  # fmt: skip
                    hidden = out[0] if isinstance(out, tuple) else out
            if g.shape.fill:
                return hidden[0, :1]
            hidden = fused.final_norm(self.inner.norm, pending, hidden) if parts else self.inner.norm(hidden)
        return self.model.lm_head(hidden[0, g.keep])

    def _graph(self, shape: Shape) -> _Graph:
        g = self.graphs.get(shape)
        if g is not None:
            self.graphs.move_to_end(shape)
            return g
        while len(self.graphs) >= MAX_GRAPHS:
            self.graphs.popitem(last=False)
        kv = None
        if shape.kv:  # buffers of its own for the keys and values it keeps
            _, kv_heads, head_dim = attention_shape(self.model.config)
            dtype, layers = next(self.model.parameters()).dtype, len(self.inner.layers)
            kv = tuple(
                torch.empty(layers, shape.tokens, kv_heads, head_dim, dtype=dtype, device=self.device) for _ in range(2)
            )
        prefixes = ([], []) if shape.fill else (self.prefix_keys, self.prefix_values)
        g = _Graph(shape, self.device, *prefixes, self.capacity, kv)
        self.graphs[shape] = g
        return g

    # --- a prefix's keys and values ----------------------------------------------------------

    def fill_tokens(self, length: int) -> int | None:
        """The tokens of the shape that `prefix_caches` would fill a prefix of `length` in (its padded
        work), or None where it would not take it."""
        shape = _fill_shape(length) if length else None
        return shape.tokens if shape is not None and fill_prefixes and not self.failed else None

    def prefix_caches(self, prefixes: list[list[int]]) -> list[Any] | None:
        """Few-shot prefixes' keys and values, each as a one-row Hugging Face cache, from replays of chunk
        shapes that keep them, the prefixes side by side as a packed batch's rows (one replay for a
        generation batch's two prefixes; the warm-up captured the shapes up to FILL_SIZES[-1] tokens),
        or None where this path does not take them. The forward it replaces, a whole model call for one
        row, cost the host 22-42 ms on an H100 (the first batches of each run, session 21's timelines); a
        replay for each prefix, ~2.7 ms of the GPU and ~1.2 ms of the host each (session 25's trace,
        under the profiler). Each cache's layers lie in one tensor for keys and one for values
        (kv_cache.stacked_cache): a batch copies a prefix into every layer at once."""
        lengths = [len(tokens) for tokens in prefixes]
        chunks = _fill_chunks(lengths) if lengths and min(lengths) > 0 else None
        if self.failed or not fill_prefixes or chunks is None:
            return None
        caches = []
        for chunk in chunks:
            own = prefixes[chunk.first : chunk.end]
            counts = lengths[chunk.first : chunk.end]
            ends = list(itertools.accumulate(counts))
            g = self._graph(chunk.shape)
            g.fill([t for tokens in own for t in tokens], [p for n in counts for p in range(n)],
                   [end - 1 for end in ends], layout(g.shape, counts, [], [0]), self.staging)  # fmt: skip
            if self._run(g) is None:
                return None
            # g.kv: [layers, tokens, kv_heads, dim], which the next replay overwrites. Each prefix's part
            # as [layers, kv_heads, length, dim] in memory of its own (clone: a copy even where the
            # transpose is contiguous already, with one key/value head).
            for n, end in zip(counts, ends, strict=True):
                parts = [t[:, end - n : end].transpose(1, 2).clone(memory_format=torch.contiguous_format) for t in g.kv]
                caches.append(kv_cache.stacked_cache(*parts))
        return caches

    def chunks(self, lengths: list[int], prefixes: int, keeps_kv: bool) -> list[Chunk] | None:
        """The chunks `forward` runs rows of these own token counts (packed order) in, with this many
        groups' prefixes, or None where it does not take them."""
        if self.failed or (not prefixes and not keeps_kv) or prefixes > MAX_GROUPS:
            return None  # no stored prefix: too little work to be worth a capture
        return chunks_for(lengths, KV_MIN_LONGEST if keeps_kv else MIN_LONGEST)

    def forward(self, ids: list[int], positions: list[int], lengths: list[int], spans: list, keep: list[int],
                kv_sink: Callable[[tuple[torch.Tensor, torch.Tensor], int, int], None] | None = None):  # fmt: skip
        """Each kept row's logits (fp32, [rows, vocab]) from the packed sequence `ids`, or None when this
        batch is not one it takes. `spans`: (first token, end token, prefix cache) of each group with a
        prefix, as packed.PackedPlan takes them (the rows after the last have none); `keep`: each row's
        last token, in the caller's row order. `kv_sink`: the chunks run in shapes that keep their keys
        and values, and after each replay it is given them (keys and values, each [layers, tokens, kv_heads,
        dim]) with the chunk's first and end token, before the next replay may overwrite them."""
        self.last_steps = []
        chunks = self.chunks(lengths, len(spans), kv_sink is not None)
        if chunks is None:
            return None
        clock = _Steps()
        prefixes = self._load_prefixes([tensors for _, _, tensors in spans])
        clock.mark("prefixes")
        key_starts = [0, *itertools.accumulate(prefixes)]
        starts = [0, *itertools.accumulate(lengths)]
        results = []
        for chunk in chunks:
            s, e = starts[chunk.first], starts[chunk.end]
            inside = [i for i, (a, b, _) in enumerate(spans) if a < e and b > s]  # consecutive groups
            ends = [min(spans[i][1], e) - s for i in inside]
            keys = key_starts[inside[0] : inside[-1] + 2] if inside else [0]
            kept = [starts[r + 1] - 1 - s for r in range(chunk.first, chunk.end)]
            g = self._graph(chunk.shape if kv_sink is None else dataclasses.replace(chunk.shape, kv=True))
            g.fill(ids[s:e], positions[s:e], kept, layout(chunk.shape, lengths[chunk.first : chunk.end], ends, keys),
                   self.staging)  # fmt: skip
            clock.mark(f"fill {chunk.shape.tokens}")
            logits = self._run(g)
            if logits is None:
                return None
            if kv_sink is not None:
                kv_sink(g.kv, s, e)
            results.append(logits[: chunk.end - chunk.first].float())  # the next replay overwrites logits
            clock.mark("replay")
        self.served += 1
        logits = torch.cat(results) if len(results) > 1 else results[0]  # rows in packed order
        row_of_last = {starts[i + 1] - 1: i for i in range(len(lengths))}
        order = [row_of_last[t] for t in keep]
        if order != list(range(len(order))):
            index = torch.empty(len(order), dtype=torch.long, device=logits.device)
            self.staging.to_device(array("q", order), torch.long, index)
            logits = logits[index]
        clock.mark("order")
        self.last_steps = clock.steps
        return logits

    def _run(self, g: _Graph) -> torch.Tensor | None:
        if not self.use_graphs:
            logits = self._forward(g)
        else:
            if g.graph is None and not self._captured(g):
                return None
            g.graph.replay()
            logits = g.logits
        if len(g.plan.layers_seen) != len(self.inner.layers):
            log.warning("packed attention was not used by every layer; packed batches run without graphs")
            self.failed = True
            return None
        return logits

    def _captured(self, g: _Graph) -> bool:
        """Capture g's graph; False (and no graphs from now on) if it cannot be."""
        captured = self.capturer.capture(lambda: self._forward(g))
        if captured is None:
            self.failed = True
            self.graphs.pop(g.shape, None)
            return False
        g.graph, g.logits = captured
        return True

    @property
    def captures(self) -> int:
        return self.capturer.captures
