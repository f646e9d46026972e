"""Decode steps over a fixed-size KV cache, replayed as one CUDA graph per step on a GPU.

Hugging Face's decode step is launch-bound: hundreds of small kernels a step, each launched from
Python, and a cache that grows by `torch.cat`. Here the cache has a fixed size per batch (rows
rounded up to a bucket, columns to a multiple of `COLUMN_STEP`), so one step always runs the same
kernels on the same buffers and can be captured once and replayed.

Results stay those of the model's own code: the step calls the model's own embedding, rotary,
decoder layers, norm and head modules; only the cache (written at one column, since rows are padded
on the left) and the attention mask (kept as a boolean [rows, 1, 1, columns], handed to the layers
as the additive bias SDPA would make of it) are ours, and for
grouped-query models the attention call, as in every forward of the engine (attention.py). Masked
columns weigh exactly zero, so the extra columns change nothing but rounding. Fused steps on a GPU
attend over each row's filled columns only (decode_attention.py: `bounds` say the same as the mask). Model types whose decoder layers
need more than that (sliding windows, scaled embeddings, extra norms) keep the dynamic path.
Around the layers (decode_step.py) the rotary module's values come from a table it fills once per
shape, the bias is built only by a layer that attends through the mask, and on a GPU one kernel
makes the greedy choice and the next step's inputs.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from evaluation.engine.server import cuda_graphs, decode_attention, decode_step, folded, fused, lt_matmul
from evaluation.engine.server.attention import attention_shape
from evaluation.engine.server.kv_cache import cache_tensors
from evaluation.engine.server.staging import Staging
from evaluation.engine.server.switches import switch

log = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)
COLUMN_STEP = 128
# The standing shape's rows (`StaticDecoder.prepare`), and the smallest bucket that steps in it: a
# smaller batch keeps a shape of its own, whose attention splits each row among more programs (an
# H100's 132 SMs over 64 rows' 4 key/value heads take one split a row; 8 rows' would take five).
STANDING_ROWS = 64
STANDING_MIN_BUCKET = 32
# The buckets whose step products get cuBLASLt algorithms chosen by timing (lt_matmul.tune).
TUNED_ROWS = (32, 48, 64)
# A standing shape narrower than this would serve few decoding batches: none is made.
STANDING_MIN_COLUMNS = 256


def standing_columns(room_tokens: int, max_positions: int | None, graphs: bool, setting: str | None = None) -> int:
    """`ENGINE_DECODE_STANDING` (auto: where decode steps run as graphs; 1: anywhere, the tests; 0: off):
    the standing shape's columns, as many as half of `room_tokens` (the cache tokens a decoding batch
    may hold, Limits.max_batch_tokens) give STANDING_ROWS rows, no more than the model's positions;
    0 for none. A 1.1 B model under 24 GB: 64 × 1,152 (1.7 GB); a 6.7 B one: none (the room is ~8k).
    The room is 60 % of the free memory over a token's cache and activations (batching.default_limits),
    so the standing shape holds under 30 % of it, beside the other batches' own shares of the rest;
    out of memory, the server lets it go (BatchGenerator.release_memory)."""
    on = switch("ENGINE_DECODE_STANDING", setting=setting)
    if not (graphs if on is None else on):
        return 0
    columns = room_tokens // 2 // STANDING_ROWS // COLUMN_STEP * COLUMN_STEP
    if max_positions:
        columns = min(columns, _columns(max_positions))
    return columns if columns >= STANDING_MIN_COLUMNS else 0


SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def supports(model: Any) -> bool:
    """Whether this model's decoder is plain enough to step with a static cache."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    if getattr(config, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
        return False
    inner = getattr(model, "model", None)
    return all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")) and hasattr(
        model, "lm_head"
    )


def row_bucket(n: int) -> int:
    return next((b for b in ROW_BUCKETS if b >= n), n)


def _columns(n: int) -> int:
    return -(-n // COLUMN_STEP) * COLUMN_STEP


class _StaticCache:
    """What the model's attention modules see as `past_key_values`: writes the step's key and value
    at the current column and hands back the whole buffers; `attend` (fused layers) reads only each
    row's filled columns while `bounded` (decode_attention.py)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], column: torch.Tensor,
                 bounds: torch.Tensor, work: decode_attention.Workspace | None):  # fmt: skip
        self.keys, self.values, self.column = keys, values, column
        self.bounds, self.work = bounds, work
        self.bounded = work is not None

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, cache_kwargs: Any = None):
        self.keys[layer_idx].index_copy_(2, self.column, key)
        self.values[layer_idx].index_copy_(2, self.column, value)
        return self.keys[layer_idx], self.values[layer_idx]

    def store_rotated(self, q, k, v, cos, sin, dim: int, layer_idx: int):
        """(queries, keys, values) for attention, the step's key rotated straight into the cache and its
        value written beside it by one kernel (fused layers on a GPU); None: rotate and `update`."""
        q = fused.rope_store(q, k, v, cos, sin, dim, self.keys[layer_idx], self.values[layer_idx], self.column)
        if q is None:
            return None
        return q, self.keys[layer_idx], self.values[layer_idx]

    def rope_attend(self, q, k, v, cos, sin, layer_idx: int, scaling: float, scale_of=None) -> torch.Tensor | None:
        """The step's attention output [rows, 1, heads, dim] from the projections' outputs, the key
        rotated and the value written into the cache by the same kernel; or None: `store_rotated`
        and `attend` (or the mask) serve."""
        if not self.bounded:
            return None
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        return decode_attention.rope_attend(q, k, v, cos, sin, keys, values, self.bounds, self.column, scaling,
                                            self.work, scale_of)  # fmt: skip

    def attend(self, q: torch.Tensor, layer_idx: int, scaling: float) -> torch.Tensor | None:
        """The step's attention output [rows, 1, heads, dim], or None: attend through the mask."""
        if not self.bounded:
            return None
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        return decode_attention.attend(q, keys, values, self.bounds, self.column, scaling, self.work)

    def get_seq_length(self, layer_idx: int = 0) -> int:  # asked by some attention code paths
        return int(self.keys[layer_idx].shape[2])


class _Buffers:
    """Everything one step reads and writes, at fixed addresses, for one (rows, columns) shape."""

    def __init__(self, model: Any, rows: int, columns: int, like: tuple[torch.Tensor, torch.Tensor], layers: int):
        device = like[0].device
        kv_heads, head_dim = like[0].shape[1], like[0].shape[3]
        v_dim = like[1].shape[3]
        self.rows, self.columns = rows, columns
        # Every layer's keys (values) are views of one tensor [layers, rows, kv_heads, columns, dim]: a
        # prefill by replays writes all layers in one operation each (BatchGenerator._graph_prefill).
        # Zeros once: every later write is a row's keys and values, finite for a finite model.
        self.stacked = (
            torch.zeros(layers, rows, kv_heads, columns, head_dim, dtype=like[0].dtype, device=device),
            torch.zeros(layers, rows, kv_heads, columns, v_dim, dtype=like[1].dtype, device=device),
        )
        self.keys, self.values = (list(t.unbind(0)) for t in self.stacked)
        self.mask = torch.zeros(rows, 1, 1, columns, dtype=torch.bool, device=device)
        self.tokens = torch.zeros(rows, dtype=torch.long, device=device)
        # Each step's greedy choice, its logprob and whether the row's logits were finite (float64
        # holds token ids and fp32 logprobs exactly), copied to the host in one transfer.
        self.chosen = torch.zeros(3, rows, dtype=torch.float64, device=device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=device)
        self.column = torch.zeros(1, dtype=torch.long, device=device)
        # Each row's filled columns (decode_attention.row_bounds), beside the mask that says the same.
        self.bounds = torch.zeros(rows, 3, dtype=torch.long, device=device)
        work = None
        if decode_attention.applies(like[0], model):
            heads = model.config.num_attention_heads
            work = decode_attention.Workspace(rows, heads, kv_heads, columns, head_dim, device)
        self.cache = _StaticCache(self.keys, self.values, self.column, self.bounds, work)
        # Every column's cos and sin (positions stay under the columns), and the next step's rows of them.
        self.table = decode_step.rotary_table(model.model.rotary_emb, like[0].dtype, device, columns)
        self.rotary_now = None
        if self.table is not None:
            self.rotary_now = torch.empty(rows, self.table.shape[1], dtype=self.table.dtype, device=device)
            self.refresh_rotary()
        # The greedy kernel's programs for a row's parts meet here (made before any capture).
        vocab = getattr(model.lm_head, "out_features", None) or model.config.vocab_size
        self.greedy_parts = decode_step.greedy_parts(rows, vocab, device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def pad_rows(self, rows: int, column: int) -> None:
        """The bucket's padding rows after `rows`: they attend somewhere (so their softmax is finite), by
        their bounds to their own steps' columns from `column` on; filled in place, with no copy from
        the host (which would wait for the GPU's queued work)."""
        self.mask[rows:, 0, 0, 0] = True
        self.bounds[rows:].fill_(0)
        self.bounds[rows:, 2].fill_(column)

    def clear_masked(self) -> None:
        """Zero every masked column of keys and values: attending through the mask reads them (as a
        softmax weight of zero, which a stale NaN or infinity would still spoil), while attending by
        bounds never does, so a prefill by replays writes only the rows' own columns (session 26)."""
        rows, columns = self.mask.shape[0], self.mask.shape[-1]
        masked = ~self.mask.view(1, rows, 1, columns, 1)
        for t in self.stacked:
            t.masked_fill_(masked, 0)

    def refresh_rotary(self) -> None:
        """The next step's cos and sin, after the host wrote positions (steps write their own)."""
        if self.table is not None:
            decode_step.rotary_rows(self.table, self.positions, self.rotary_now)


class _LazyBias:
    """The mask as the scores' additive bias (zeros, -inf where masked, as SDPA would make it in every
    layer), built by the first layer that attends through the mask: with bounded attention none does."""

    def __init__(self, mask: torch.Tensor, dtype: torch.dtype):
        self.mask, self.dtype = mask, dtype
        self.bias: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor:
        if self.bias is None:
            self.bias = torch.zeros(self.mask.shape, dtype=self.dtype, device=self.mask.device)
            self.bias.masked_fill_(self.mask.logical_not(), float("-inf"))
        return self.bias


class Launched:
    """A queued step's choices for each slot: (token, logprob, logits finite), once the GPU has them."""

    def __init__(self, host: torch.Tensor, event: Any, rows: int):
        self.host, self.event, self.rows = host, event, rows

    def ready(self) -> bool:
        return self.event is None or self.event.query()

    def get(self) -> tuple[list[int], list[float], list[bool]]:
        if self.event is not None:
            self.event.synchronize()
        tokens, logprobs, finite = self.host[:, : self.rows].tolist()
        return [int(t) for t in tokens], logprobs, [bool(f) for f in finite]


class StaticDecoder:
    """Steps every row of a batch one token at a time; `start` loads a prefill's cache, `step` runs one."""

    def __init__(self, model: Any, *, use_graphs: bool):
        self.model = model
        self.inner = model.model
        self.use_graphs = use_graphs
        self.buffers: _Buffers | None = None
        # Buffers and graph made at the server's warm-up for the batches that fit them (`prepare`).
        self.standing: _Buffers | None = None
        self._room = 0  # cache tokens the standing shape and another may hold together
        self.prepared = (0, 0.0)  # the warm-up's captures and their seconds
        self.tuned: dict = {}  # lt_matmul.tune's report
        # Each shape's own memory pool: one shape at a time, the old one's memory goes with its buffers.
        self.capturer = cuda_graphs.Capturer(shared_pool=False)
        self.graph_failed = False
        self.rows = 0  # slots in use (rows of the batch, finished ones included)
        self.column = 0  # the column the next step writes (as `buffers.column` holds on the device)
        self.end = 0  # the columns the batch's rows need, their new tokens included
        self._like: tuple[torch.Tensor, torch.Tensor] | None = None
        self._layers = 0
        # The steps' choices reach the host through its pinned buffers (read one step behind: two in flight).
        self.staging = Staging(next(model.parameters()).device)

    # --- one step, as the model's own modules compute it ----------------------------------------

    def _forward(self, b: _Buffers) -> torch.Tensor:
        # The current token attends to itself: open its column before the layers read the mask.
        b.mask.index_fill_(3, b.column, True)
        hidden = self.inner.embed_tokens(b.tokens[:, None])
        bias = _LazyBias(b.mask, hidden.dtype)
        position_ids = b.positions[:, None]
        if b.table is not None:
            position_embeddings = decode_step.cos_sin(b.rotary_now)
        else:
            position_embeddings = self.inner.rotary_emb(hidden, position_ids)
        folds = folded.folded(self.model) and b.cache.bounded and fused.plain_rms_norm(self.inner.norm)
        if fused.runs_fused(self.model) and folds:
            # The norms folded into the products (folded.py): each layer adds into the residual in place.
            mask = bias if decode_step.lean else bias()
            for layer in self.inner.layers:
                hidden = folded.step_parts(layer, hidden, b.cache, mask, position_ids, position_embeddings)
            hidden = fused.final_norm(self.inner.norm, None, hidden)
        elif fused.runs_fused(self.model) and fused.plain_rms_norm(self.inner.norm):
            # Each layer's residual sum is made by the next layer's input norm (the last one's by the
            # final norm): the same roundings, one kernel fewer a layer.
            pending = None
            mask = bias if decode_step.lean else bias()
            for layer in self.inner.layers:
                pending, hidden = fused.layer_parts(
                    layer, hidden, pending, mask, position_ids, b.cache, b.column, position_embeddings
                )
            hidden = fused.final_norm(self.inner.norm, pending, hidden)
        else:
            for layer in self.inner.layers:
                out = layer(
                    hidden,
                    attention_mask=bias(),
                    position_ids=position_ids,
                    past_key_values=b.cache,
                    use_cache=True,
                    cache_position=b.column,
                    position_embeddings=position_embeddings,
                )
                hidden = out[0] if isinstance(out, tuple) else out
            hidden = self.inner.norm(hidden)
        head = self.model.lm_head(hidden[:, -1, :])
        # The greedy choice, and the next step's inputs: a batch of greedy rows steps on without waiting
        # for the host (`launch`). One kernel where it runs.
        return decode_step.greedy_tail(head, b.chosen, b.tokens, b.positions, b.column, b.table, b.rotary_now,
                                       b.greedy_parts)  # fmt: skip

    @property
    def captures(self) -> int:
        return self.capturer.captures

    @torch.inference_mode()
    def prepare(self, standing_columns: int = 0, room_tokens: int = 0) -> None:
        """The server's warm-up: two eager steps of one row on the capture stream, which the first
        capture would otherwise run inside an evaluation (cuBLAS's workspace on that stream, the
        step's kernels loaded: two steps' host time of the first decode batch). No graph for that
        one-row shape, which later batches rarely have. `standing_columns`: then the standing shape,
        STANDING_ROWS × those columns, made and captured here; a decoding batch of STANDING_MIN_BUCKET
        rows or more that fits it steps in it, with no buffers to make and no graph to capture
        (14-35 ms of a 1.1 B generation batch's ~80 ms start, docs/benchmarks.md, session 18). Kept
        beside another batch's shape while both hold no more than `room_tokens` of cache."""
        if self.use_graphs and not self.graph_failed and not self.capturer.warmed:
            b = _Buffers(self.model, 1, COLUMN_STEP, self._model_like(), len(self.inner.layers))
            b.mask[:, 0, 0, 0] = True  # the row attends to its own first column, as a padding row does
            try:
                self.capturer.warm_up(lambda: self._forward(b))
            except Exception:  # the server still starts: the first capture then warms up itself
                log.warning("decode warm-up steps failed", exc_info=True)
        if self.use_graphs and not self.graph_failed and fused.runs_fused(self.model):
            # The step products' algorithms, timed where the steps will mostly run (lt_matmul.py).
            try:
                self.tuned = lt_matmul.tune(folded.product_groups(self.model), list(TUNED_ROWS))
            except Exception:  # torch's products then
                log.warning("timing cuBLASLt's algorithms failed", exc_info=True)
                lt_matmul.forget()
        if standing_columns <= 0 or self.graph_failed:
            return
        if self._like is None:
            self._like, self._layers = self._model_like(), len(self.inner.layers)
        self._room = room_tokens
        self.buffers = None
        self.buffers = self.standing = self._shape(STANDING_ROWS, _columns(standing_columns))
        self.prepared = (self.captures, self.capturer.seconds)

    def _fits_standing(self, bucket: int, columns: int) -> bool:
        s = self.standing
        if s is None or (self.use_graphs and s.graph is None):  # its graph was dropped (_unbounded)
            return False
        return STANDING_MIN_BUCKET <= bucket <= s.rows and columns <= s.columns

    def _model_like(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Empty tensors of a layer's keys' and values' shapes and dtype, from the model's config."""
        _, kv_heads, dim = attention_shape(self.model.config)
        weight = next(self.model.parameters())
        like = torch.empty(0, kv_heads, 0, dim, dtype=weight.dtype, device=weight.device)
        return like, like

    # --- a batch ----------------------------------------------------------------------------------

    def reserve(self, rows: int, width: int, max_new_tokens: int) -> _Buffers:
        """The buffers (and graph) for a batch of `rows` prompts padded to `width`: the current ones if
        they have that shape (and their graph, where graphs run), else new ones. A decoding batch asks
        before its prefill, `start` again after it: made first, the large buffers find whole segments;
        made after it, among the prefill's freed activations and beside its cache, a 6.7 B batch's ran
        out of memory under a 24 GB budget with 2.6 GiB reserved and unallocated (session 17)."""
        bucket, columns = row_bucket(rows), _columns(width + max_new_tokens)
        if self._fits_standing(bucket, columns):
            self.buffers = self.standing
            return self.buffers
        old = self.buffers
        dropped_graph = old is not None and old.graph is None and self.use_graphs and not self.graph_failed
        if old is not None and ((old.rows, old.columns) != (bucket, columns) or dropped_graph):
            # One shape at a time: the budget of a small track has no room for several caches.
            self.buffers = None
        self._keep_standing(bucket * columns)
        if self._like is None:
            self._like, self._layers = self._model_like(), len(self.inner.layers)
        self.buffers = self._shape(bucket, columns)
        return self.buffers

    def _keep_standing(self, tokens: int) -> None:
        """Before a shape of `tokens` cache tokens is made: the standing one goes unless both fit the room."""
        s = self.standing
        if s is not None and (s.rows * s.columns + tokens > self._room or (self.use_graphs and s.graph is None)):
            self.standing = None

    def _shape(self, bucket: int, columns: int) -> _Buffers:
        """Buffers of this shape, with their graph: the current ones, or new ones (whose contents the
        caller must fill: the capture's warm-up steps write into them)."""
        b = self.buffers
        if b is not None and b.rows == bucket and b.columns == columns:
            return b
        if self.use_graphs and not self.graph_failed:
            # A queued step of the old shape may still run; the old graph and buffers go once this
            # shape replaces them (torch.cuda.graph() synchronized here too).
            torch.cuda.current_stream().synchronize()
        b = _Buffers(self.model, bucket, columns, self._like, self._layers)
        if self.use_graphs and not self.graph_failed:
            # The warm-up steps (first capture only) change the buffers; `start` and `_grown` refill them.
            captured = self.capturer.capture(lambda: self._forward(b), warm_ups=2)
            if captured is None:  # a model the graph cannot hold still decodes, step by step
                self.graph_failed = True
            else:
                b.graph, b.logits = captured
        return b

    def start(self, cache: Any, mask: torch.Tensor, next_positions: torch.Tensor, max_new_tokens: int,
              bounds: tuple[torch.Tensor, bool] | None = None) -> None:  # fmt: skip
        """Load a prefill's cache (rows padded on the left to one width) and its 2-D attention mask;
        `cache` None: the prefill wrote its keys and values into the reserved buffers itself
        (BatchGenerator._graph_prefill). `bounds`: the mask's `row_bounds`, worked out already (on the
        host): then nothing here waits for the GPU."""
        layers = cache_tensors(cache) if cache is not None else []
        if layers:
            # The shapes and dtypes of a layer's keys and values, without holding on to the prefill's cache.
            self._like = tuple(
                torch.empty(0, t.shape[1], 0, t.shape[3], dtype=t.dtype, device=t.device) for t in layers[0]
            )
            self._layers = len(layers)
        rows, width = mask.shape
        b = self.reserve(rows, width, max_new_tokens)
        if b.graph is None:  # eager steps: a batch before may have turned the bounds off
            b.cache.bounded = b.cache.work is not None
        if layers:  # else written already
            for (k, v), bk, bv in zip(layers, b.keys, b.values, strict=True):
                bk[:rows, :, :width].copy_(k)
                bv[:rows, :, :width].copy_(v)
                bk[:rows, :, width:].zero_()
                bv[:rows, :, width:].zero_()
                bk[rows:].zero_()
                bv[rows:].zero_()
        b.mask.zero_()
        b.mask[:rows, 0, 0, :width].copy_(mask.bool())
        b.pad_rows(rows, width)
        bounds, fits = decode_attention.row_bounds(mask) if bounds is None else bounds
        b.bounds[:rows].copy_(bounds)
        if not fits:
            self._unbounded(b)
        if not layers and not b.cache.bounded:
            b.clear_masked()
        b.positions.zero_()
        b.positions[:rows].copy_(next_positions)
        b.refresh_rotary()
        b.column.fill_(width)
        self.rows, self.column, self.end = rows, width, width + max_new_tokens

    # --- rows joining a running batch ------------------------------------------------------------

    def join_shape(self, slots: int, width: int, max_new_tokens: int) -> tuple[int, int]:
        """(slots, columns) the running batch needs once rows of this prompt width join it, `slots`
        being the highest slot they take plus one (unpadded: what the batch limits count)."""
        shift = max(0, width - self.column)
        end = max(self.end + shift, self.column + shift + max_new_tokens)
        return max(self.rows, slots), end

    def join(self, cache: Any, mask: torch.Tensor, next_positions: torch.Tensor, max_new_tokens: int,
             slots: list[int]) -> None:  # fmt: skip
        """Add rows to the running batch at `slots` (finished rows' slots, or new ones from `self.rows`
        on). Their prefill's cache, padded on the left to its own width, ends at the current column as
        the first rows' prompts did at `start`, so every row's next token goes to the same column. When
        the slots, a wider prompt or more new tokens need room, the buffers grow: the running rows are
        copied into a larger shape (shifted right if a prompt is wider than the current column: the
        masks move with them, the positions are the rows' own) and the graph is captured again."""
        layers = cache_tensors(cache)
        rows, width = mask.shape
        assert len(slots) == rows
        used, end = self.join_shape(max(slots) + 1, width, max_new_tokens)
        shift = max(0, width - self.column)
        old = self.buffers
        assert old is not None
        bucket, columns = max(old.rows, row_bucket(used)), max(old.columns, _columns(end))
        if shift or (bucket, columns) != (old.rows, old.columns):
            self.buffers = self._grown(old, bucket, columns, shift)  # raises before any change if out of memory
            self.column += shift
        b = self.buffers
        index = torch.tensor(slots, device=b.mask.device)
        start = self.column - width
        for (k, v), bk, bv in zip(layers, b.keys, b.values, strict=True):
            # Rows of a slot taken before may hold another row's keys: everything but the new prompt's
            # columns is masked, and zero (finite) where no step has written yet.
            bk.index_copy_(0, index, torch.nn.functional.pad(k, (0, 0, start, columns - self.column)))
            bv.index_copy_(0, index, torch.nn.functional.pad(v, (0, 0, start, columns - self.column)))
        row_mask = torch.zeros(rows, 1, 1, columns, dtype=torch.bool, device=b.mask.device)
        row_mask[:, 0, 0, start : self.column] = mask.bool()
        b.mask.index_copy_(0, index, row_mask)
        bounds, fits = decode_attention.row_bounds(mask)
        b.bounds.index_copy_(0, index, bounds + start)
        if not fits and b.cache.bounded:
            self._unbounded(b)
            b.clear_masked()  # the running rows' unwritten columns too
        b.positions.index_copy_(0, index, next_positions.to(b.positions.dtype))
        b.refresh_rotary()
        self.rows, self.end = used, end

    def _grown(self, old: _Buffers, bucket: int, columns: int, shift: int) -> _Buffers:
        if (bucket, columns) != (old.rows, old.columns):
            self._keep_standing(bucket * columns)
        new = self._shape(bucket, columns)  # the old buffers themselves if only a shift is needed
        rows, width = self.rows, self.column
        # The running rows' columns: dim 2 of keys and values [rows, heads, columns, dim], dim 3 of the
        # mask [rows, 1, 1, columns]; copied first when they move within the same buffers.
        # (All copies are made before anything is written: running out of memory changes nothing.)
        pairs = [(t, source, 2) for t, source in zip(new.keys + new.values, old.keys + old.values, strict=True)]
        pairs.append((new.mask, old.mask, 3))
        parts = [source[:rows].narrow(dim, 0, width) for _, source, dim in pairs]
        if new is old:
            parts = [part.clone() for part in parts]
        for (target, _, dim), part in zip(pairs, parts, strict=True):
            target.zero_()
            target[:rows].narrow(dim, shift, width).copy_(part)
        new.pad_rows(rows, width + shift)
        new.bounds[:rows].copy_(old.bounds[:rows] + shift)
        if not old.cache.bounded:
            self._unbounded(new)
        if new is not old:
            new.positions[:rows].copy_(old.positions[:rows])
            new.tokens[:rows].copy_(old.tokens[:rows])  # the next step's inputs of queued greedy steps
        new.column.fill_(width + shift)
        return new

    def _unbounded(self, b: _Buffers) -> None:
        """A row whose mask the bounds cannot describe: this batch attends through the mask, eagerly (its
        graph attends by bounds; the next batch's shape gets a graph of its own)."""
        if b.cache.bounded:
            b.cache.bounded = False
            b.graph = b.logits = None

    @torch.inference_mode()
    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed each row its last token; return the next-token logits (fp32, rows × vocab)."""
        b = self.buffers
        assert b is not None and len(tokens) == self.rows
        b.tokens[: self.rows].copy_(torch.tensor(tokens, dtype=torch.long))
        return self._run(b)[: self.rows]

    def _run(self, b: _Buffers) -> torch.Tensor:
        if b.graph is not None:
            b.graph.replay()
            logits = b.logits
        else:
            logits = self._forward(b)
        self.column += 1
        return logits

    # --- greedy batches: steps queued ahead of the host ---------------------------------------------

    def feed(self, slots: list[int], tokens: list[int]) -> None:
        """The tokens the given slots read at the next step (a batch's first tokens, joined rows')."""
        b = self.buffers
        assert b is not None
        if slots:
            index = torch.tensor(slots, dtype=torch.long)
            values = torch.tensor(tokens, dtype=torch.long)
            b.tokens.index_copy_(0, index.to(b.tokens.device), values.to(b.tokens.device))

    @torch.inference_mode()
    def launch(self) -> Launched:
        """Queue one step whose input is each row's greedy choice of the step before (in `tokens`) and
        start copying its choices to the host; `Launched.get` waits for them. The host prepares the
        next step while the GPU runs this one, instead of the GPU waiting for the host between steps."""
        b = self.buffers
        assert b is not None
        self._run(b)
        # Each queued step's choices in a pinned buffer of their own until read (a step behind).
        return Launched(*self.staging.from_device(b.chosen), self.rows)

    def release(self) -> None:
        self.buffers = self.standing = None
