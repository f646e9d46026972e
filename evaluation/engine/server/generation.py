"""Batched generation over a Hugging Face causal LM: one shared prefill, then a greedy or sampled
decode loop with a KV cache, each sequence stopping on its own.

Results must not depend on which requests share a batch, so padding is on the left with an
attention mask and explicit position ids, logprobs come from fp32 log-softmax of the logits, and
sampling draws from a generator owned by each sequence.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from evaluation.engine.server import decode_attention, folded, fused, packed, packed_graphs, static_decode
from evaluation.engine.server.attention import engine_attention
from evaluation.engine.server.decode_step import greedy_choice, write_choice
from evaluation.engine.server.kv_cache import PrefixStore, cache_tensors, expanded, gathered, map_cache, stacked
from evaluation.engine.server.staging import Staging
from evaluation.engine.server.static_decode import StaticDecoder

log = logging.getLogger(__name__)

GREEDY_TEMPERATURE = 1e-5
# Greedy static-cache batches queue each step before the host reads the one before (StaticDecoder.launch);
# `ENGINE_QUEUED_STEPS=0` (or the benchmarks) has the host choose every token before the next step.
queued_steps = os.environ.get("ENGINE_QUEUED_STEPS", "1") != "0"
# The server's warm-up runs the decoding batches' dynamic prefill (`ENGINE_WARM_DECODE_PREFILL=0`: not).
warm_decode_prefill = os.environ.get("ENGINE_WARM_DECODE_PREFILL", "1") != "0"
# A decoding batch's prefill runs as packed-graph replays that write its keys and values straight into
# the static decoder's buffers (`_graph_prefill`; `ENGINE_GRAPH_DECODE_PREFILL=0`: a forward and a copy).
graph_decode_prefill = os.environ.get("ENGINE_GRAPH_DECODE_PREFILL", "1") != "0"
# Below this many shared tokens, a separate prefill of the prefix costs more than it saves.
MIN_SHARED_PREFIX = 16
# A few rows of a batch of several runs get a forward of their own for the prefix they share only if
# it skips this many tokens: on a GPU, one more forward of a small model costs as long as computing
# thousands of tokens (most of it launching kernels). A batch that is all one group keeps the rule above.
MIN_PREFIX_SAVING = 1024
# Model FLOPs worth one forward's host time (Python and ~400 kernel launches, ~30 ms) for a small
# model on a fast GPU: ~6,800 tokens at 1.1 B, ~1,100 at 6.7 B (docs/benchmarks.md, session 9's profile).
FORWARD_FLOPS = 15 * 10**12
# A packed-graph replay's host time in the same model FLOPs: ~1 ms, ~30 times less than a forward's (an
# estimate: three prefix fills by replays, host and GPU, took 6.9-7.5 ms in all on an H100, session 22).
REPLAY_FLOPS = FORWARD_FLOPS // 30


def forward_worth_tokens(params: int) -> int:
    """Tokens whose model work (2 × params FLOPs each) is worth one forward's host time."""
    return int(FORWARD_FLOPS // (2 * max(params, 1)))


@dataclass
class Row:
    """One sequence to generate: a request asking for n sequences becomes n rows."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    echo: bool = False
    stop_sequences: list[str] = field(default_factory=list)
    generator: torch.Generator | None = None
    seed: int = 0
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prompt_logprobs: list[float] | None = None
    finished: bool = False
    finish_reason: str = ""
    error: str | None = None

    def reset(self) -> None:
        """Forget any output so the row can run again (after its batch ran out of memory)."""
        self.tokens, self.logprobs, self.prompt_logprobs = [], [], None
        self.finished, self.finish_reason, self.error = False, "", None
        if self.generator is not None:
            self.generator.manual_seed(self.seed)

    @property
    def greedy(self) -> bool:
        return self.generator is None or self.temperature <= GREEDY_TEMPERATURE

    @property
    def needs_decode(self) -> bool:
        return self.max_new_tokens > 1


def common_prefix_length(sequences: list[list[int]]) -> int:
    """Tokens every sequence begins with. Binary search on slice equality: the comparisons run in C,
    which matters for the scheduler's clustering of hundreds of 500-token prompts per gather."""
    first = sequences[0]
    low, high = 0, min(len(s) for s in sequences)
    while low < high:
        mid = (low + high + 1) // 2
        head = first[:mid]
        if all(s[:mid] == head for s in sequences):
            low = mid
        else:
            high = mid - 1
    return low


def _shared_length(a: list[int], b: list[int], guess: int = 0) -> int:
    """`common_prefix_length([a, b])` without its generic loop: this runs for every neighbouring pair
    of a gather's rows, on the model thread, inside a batch's time. `guess`: the length the pair before
    shared. Sorted rows of one run share about as much as their neighbours (the few-shot prefix and
    a few tokens of the question), so one comparison of that many tokens, then a search among the
    few tokens after it, replaces a binary search over the whole prompt (~10 comparisons)."""
    n = min(len(a), len(b))
    guess = min(guess, n)
    if guess and a[:guess] == b[:guess]:
        low, step = guess, 1
        while low + step <= n and a[low : low + step] == b[low : low + step]:
            low += step
            step *= 2
        high = min(low + step - 1, n)
        while low < high:  # the first `low` tokens are equal: compare only what follows
            mid = (low + high + 1) // 2
            if a[low:mid] == b[low:mid]:
                low = mid
            else:
                high = mid - 1
        return low
    low, high = 0, guess - 1 if guess else n
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def adjacent_shared(seqs: list[list[int]]) -> list[int]:
    """Tokens each sequence shares with the one before it."""
    links: list[int] = []
    guess = 0
    for a, b in zip(seqs, seqs[1:], strict=False):
        guess = _shared_length(a, b, guess)
        links.append(guess)
    return links


def prefix_groups(
    seqs: list[list[int]], min_drop: int = MIN_SHARED_PREFIX, *, links: list[int] | None = None
) -> list[tuple[list[int], int]]:
    """Indices of `seqs` grouped by a long common prefix, with the length each group shares (a lone
    sequence's whole length). Sorted, the sequences of one few-shot run are neighbours: a group ends
    where the next sequence would cut its shared prefix by `min_drop` tokens or more. A lone sequence
    joins the next only if they share `min_drop` tokens and that one shares no more with the sequence
    after it: a straggler of one run must not drag the next run's group down to the few instruction
    tokens they have in common. `links`: `adjacent_shared(seqs)` of sequences already sorted, when the
    caller has it."""
    if links is None:
        order = sorted(range(len(seqs)), key=seqs.__getitem__)
        links = adjacent_shared([seqs[i] for i in order])
    else:
        order = list(range(len(seqs)))
    groups: list[tuple[list[int], int]] = []
    current, shared = [order[0]], len(seqs[order[0]])
    for k, index in enumerate(order[1:]):
        link = links[k]
        if len(current) == 1:
            following = links[k + 1] if k + 1 < len(links) else -1
            joins = link >= min_drop and following - link < min_drop
        else:
            joins = shared - min(link, shared) < min_drop
        if joins:
            current.append(index)
            shared = min(shared, link)
        else:
            groups.append((current, shared))
            current, shared = [index], len(seqs[index])
    groups.append((current, shared))
    return groups


@dataclass
class PrefixGroup:
    """Rows of a batch that start from one prefix: `length` tokens, whose one-row cache is `cache`
    (stored by an earlier batch, or None: prefill it now). Length 0: the rows share nothing."""

    rows: list[Row]
    length: int = 0
    cache: Any = None


class Joining(Protocol):
    """Where rows come from that may join a running decode batch (the scheduler's queue)."""

    def take(self, generator: BatchGenerator, slots: list[Row]) -> list[Row]:
        """Rows to join now, given the batch's slots (finished rows' slots are taken first); or none."""

    def decline(self, rows: list[Row]) -> None:
        """Rows `take` gave that could not join (no memory for them): they are reset, to run later."""


@dataclass
class LaunchedBatch:
    """A packed batch of greedy rows whose forward and choice are queued on the GPU: `finish` waits for
    them and fills in the rows. Meanwhile the host can make the next batch ready (Scheduler)."""

    rows: list[Row]
    choices: static_decode.Launched  # each row's token, its logprob and finiteness, as a decode step's
    record: Callable[[list[Row], list[int], list[float], list[bool]], None]
    start: Any = None  # a torch.cuda.Event recorded before the batch's first GPU work

    def gpu_seconds(self) -> float | None:
        """The GPU's seconds from the batch's first work to its answers' copy (once finished)."""
        if self.start is None or self.choices.event is None:
            return None
        return self.start.elapsed_time(self.choices.event) / 1000

    def ready(self) -> bool:
        return self.choices.ready()

    def finish(self) -> None:
        self.record(self.rows, *self.choices.get())


def _packed_order(groups: list[PrefixGroup]) -> list[PrefixGroup]:
    """Groups with a prefix first: the packed kernels attend the leading tokens to prefixes."""
    return sorted(groups, key=lambda g: not g.length)


def _packed_inputs(groups: list[PrefixGroup]) -> tuple[list[PrefixGroup], list[int], list[int], list[int], list]:
    """A packed forward's inputs: the groups in packed order (`_packed_order`), the rows' own tokens
    side by side, their positions, each row's count and, per group with a prefix, (first token, end
    token, its cache's tensors)."""
    ordered = _packed_order(groups)
    ids: list[int] = []
    positions: list[int] = []
    lengths: list[int] = []
    spans = []
    for group in ordered:
        start = len(ids)
        for row in group.rows:
            own = row.prompt_ids[group.length :]
            ids += own
            positions += range(group.length, group.length + len(own))
            lengths.append(len(own))
        if group.length:
            spans.append((start, len(ids), cache_tensors(group.cache)))
    return ordered, ids, positions, lengths, spans


def _copy_prefix(pairs, buffers, first: int, end: int, start: int, stop: int) -> None:
    """A prefix's keys and values (a one-row cache's `pairs`) into the static buffers' rows first..end,
    columns start..stop: every layer in one copy where they are stacked (a replay's fill, whose layers
    are views of one tensor), else layer by layer (88 copies at 22 layers: ~1 ms of launches)."""
    layers = stacked(pairs)
    if layers is not None:
        for source, target in zip(layers, buffers.stacked, strict=True):  # [layers, kv_heads, length, dim]
            target[:, first:end, :, start:stop].copy_(source[:, None].expand(-1, end - first, -1, -1, -1))
        return
    for (k, v), bk, bv in zip(pairs, buffers.keys, buffers.values, strict=True):
        for source, target in ((k, bk), (v, bv)):
            target[first:end, :, start:stop].copy_(source.expand(end - first, *source.shape[1:]))


class BatchGenerator:
    """Runs lists of rows through the model together. Not thread-safe: one worker thread owns it."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        prefix_sharing: bool = True,
        min_shared_prefix: int = MIN_SHARED_PREFIX,
        decode: str = "auto",
        prefix_store_bytes: int = 0,
        packing: bool = True,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        # Fused decoder layers for the engine's forwards (fused.py: on a GPU in half precision).
        self.fused = fused.install(model)
        # Decode steps with the norms folded into the products (folded.py: `ENGINE_FOLD_NORMS`).
        self.folded = self.fused and folded.fold(model)
        self.prefix_sharing = prefix_sharing
        self.min_shared_prefix = min_shared_prefix
        # Tokens a decoding batch's own forward of a prefix no batch stored must skip to be worth it,
        # whole batches too: a generation suite's one-shot prefix (~85 tokens) skipped a few hundred
        # tokens' work at the cost of a forward per run (session 13). On the CPU the forward's cost is
        # its arithmetic: any shared prefix is worth it (and the tests decode from shared prefixes).
        params = sum(p.numel() for p in model.parameters())
        self.decode_prefix_saving = forward_worth_tokens(params) if self.device.type == "cuda" else 0
        self.replay_worth = int(REPLAY_FLOPS // (2 * max(params, 1)))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_ids = self._eos_ids(model, tokenizer)
        self._keep_arg = None
        params = inspect.signature(model.forward).parameters
        for name in ("logits_to_keep", "num_logits_to_keep"):
            if name in params:
                self._keep_arg = name
                break
        # Few-shot prefixes kept across batches (0 bytes: each batch prefills its own).
        self.prefixes = PrefixStore(prefix_store_bytes) if prefix_sharing and prefix_store_bytes > 0 else None
        self.last_shared_prefix = 0
        self.last_prefix_reused = False
        self.last_skipped_tokens = 0
        self.last_decode_steps = 0
        self.warm_up_seconds: dict[str, float] = {}  # the server's warm-up, part by part
        # Host seconds of the last batch's static decode loop: in all, loading its first rows (and
        # capturing their step), and rows joining it (their prefills, growing the buffers, captures).
        self.last_decode_times: dict[str, float] = {}
        self.last_joined: list[Row] = []  # rows that joined the last batch while it decoded
        self.static = self._static_decoder(decode)
        # Single-token batches as one packed sequence (packed.py) where the model allows it.
        self.packing = packing and prefix_sharing and packed.supports(model)
        self.packed_max_length = packed.max_length(model) if self.packing else None
        self.last_packed = False
        # Host seconds from a packed batch's start until its forward was launched (its GPU work queued):
        # with the batch's whole time, how much of it the host took before the GPU could start.
        self.last_launch_seconds = 0.0
        # Within that: prefixes no batch had stored, prefilled now (how many, host seconds), and graphs
        # captured (a chunk shape not captured at warm-up).
        self.last_prefix_fills: tuple[int, float] = (0, 0.0)
        self.last_captures = 0
        self.last_launch_steps: list[tuple[str, float]] = []  # within the launch (PackedGraphs.last_steps)
        self.last_launched: LaunchedBatch | None = None  # generate(defer=True) left this batch on the GPU
        self.staging = Staging(self.device)  # pinned buffers for the launched batches' answers
        # Packed batches in chunks of a few fixed sizes, replayed as CUDA graphs (packed_graphs.py).
        self.graphs = None
        if self.packing and packed_graphs.enabled(model, self.device):
            self.graphs = packed_graphs.PackedGraphs(model, use_graphs=self.device.type == "cuda")
        if self.device.type == "cuda":
            # cuDNN's attention builds a new execution plan for every new shape, and every decode step
            # has a new key length: tens of milliseconds a step. Flash and memory-efficient kernels don't.
            torch.backends.cuda.enable_cudnn_sdp(False)

    def _static_decoder(self, decode: str) -> StaticDecoder | None:
        """`auto`: a static cache with CUDA graphs on a GPU, the dynamic cache elsewhere; `static`
        forces the static cache (graphs only on a GPU); `dynamic` never uses it."""
        if decode not in ("auto", "static", "dynamic"):
            raise ValueError(f"unknown decode mode {decode!r}")
        on_gpu = self.device.type == "cuda"
        if decode == "dynamic" or (decode == "auto" and not on_gpu) or not static_decode.supports(self.model):
            return None
        return StaticDecoder(self.model, use_graphs=on_gpu)

    @staticmethod
    def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
        # generate() stops on the generation config's eos; do the same so results agree with it.
        config = getattr(model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None) if config is not None else None
        if eos is None:
            eos = getattr(model.config, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        if eos is None:
            return set()
        return set(eos) if isinstance(eos, list | tuple) else {int(eos)}

    def _keep(self, n: int) -> dict:
        return {self._keep_arg: n} if self._keep_arg else {}

    # --- prefill -------------------------------------------------------------------------------

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
                mask[i, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)

    @staticmethod
    def _positions(mask: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
        pos = mask.cumsum(-1) - 1 + offset
        return pos.masked_fill(mask == 0, 1)

    def _shared_prefix(self, seqs: list[list[int]], common: int | None = None) -> tuple[int, Any | None]:
        """How many leading tokens the rows share and get prefilled once, with the stored one-row
        cache of them when an earlier batch left one (else None: prefill them now). `common`: the
        tokens every row begins with, where the caller knows it."""
        if not self.prefix_sharing:
            return 0, None
        if common is None:
            common = common_prefix_length(seqs)
        # Every row keeps at least one token of its own, whose logits choose its first output.
        limit = min(common, min(len(s) for s in seqs) - 1)
        found = self.prefixes.find(seqs[0][:limit]) if self.prefixes is not None else None
        if found is not None:
            length, cache = found
            # Batches of one run share their few-shot prefix plus, now and then, a few tokens of
            # their questions: a stored prefix slightly shorter than this batch's still serves, the
            # tokens in between are prefilled with each row's own.
            if len(seqs) == 1 or limit - length <= max(32, limit // 10):
                return length, cache
        if len(seqs) > 1 and limit >= self.min_shared_prefix:
            return limit, None
        return 0, None

    def _groups(self, rows: list[Row], decoding: bool = False) -> list[PrefixGroup]:
        """The batch's rows by the prefix each starts from: several runs' rows can share one forward,
        each run's from its own prefix. A prefix no batch stored gets a forward of its own only where
        it skips enough tokens (`decoding`: the batch's rows go on decoding, see decode_prefix_saving)."""
        seqs = [r.prompt_ids for r in rows]
        if not self.prefix_sharing or len(rows) == 1:
            return [PrefixGroup(rows, *self._shared_prefix(seqs))]
        groups = []
        for indices, shared in prefix_groups(seqs, self.min_shared_prefix):
            # A group is a run of the sorted rows: what they all share is the least any two neighbours do.
            length, cache = self._shared_prefix([seqs[i] for i in indices], shared)
            # Tokens a forward of its own must skip: a decoding batch's rule (whether one run's rows or
            # several runs'), or, for a few rows beside other runs' in a single-token batch, MIN_PREFIX_SAVING.
            if decoding:
                worth = self._decode_prefix_worth(length)
            else:
                worth = 0 if len(indices) == len(rows) else MIN_PREFIX_SAVING
            if cache is None and (len(indices) - 1) * length < worth:
                length = 0
            groups.append(PrefixGroup([rows[i] for i in indices], length, cache))
        return groups

    def _decode_prefix_worth(self, length: int) -> int:
        """Tokens a decoding batch's fill of a new prefix of `length` must skip: a forward's worth
        (`decode_prefix_saving`), or where a packed-graph replay fills it, the replay's padded tokens
        and its launch's worth. A generation suite's one-shot prefixes (~85 tokens, 25 rows a run) are
        then shared: ~4,000 fewer tokens computed, and the 1.1 B batch's prefill took 17.7-20.8 ms
        against ~34 ms on an H100 (docs/benchmarks.md, session 22)."""
        fill = self.graphs.fill_tokens(length) if self.decode_prefix_saving and self.graphs is not None else None
        if fill is None:
            return self.decode_prefix_saving
        return min(self.decode_prefix_saving, fill + self.replay_worth)

    def release_memory(self) -> None:
        """Give back what is kept between batches (after running out of memory)."""
        if self.static is not None:
            self.static.release()  # its fixed-size cache is rebuilt at the size of the next batch
        if self.prefixes is not None:
            self.prefixes.clear()
        if self.graphs is not None:
            self.graphs.release()

    def prepare_graphs(self, room_tokens: int = 0) -> None:
        """The server's warm-up: capture the packed batches' graphs as a batch would run them, compile
        the prefix merge and the decode steps' attention kernels, run the decode graphs' warm-up
        steps and make the standing decode shape (static_decode.standing_columns of `room_tokens`,
        the cache tokens a decoding batch may hold)."""
        with self._running():
            if self.graphs is not None:  # its captures run the prefix merge too
                kv_chunks = graph_decode_prefill and self.static is not None
                self.time_warm_up("packed_graphs", self.graphs.prepare, kv_chunks=kv_chunks)
            elif self.packing:  # packed batches are the prefix merge's only caller
                self.time_warm_up("prefix_merge", fused.prepare_merge, self.model)
            if self.static is not None:
                self.time_warm_up("decode_kernels", decode_attention.prepare, self.model)
                positions = getattr(self.model.config, "max_position_embeddings", None)
                standing = static_decode.standing_columns(room_tokens, positions, self.static.use_graphs)
                self.time_warm_up("decode_steps", self.static.prepare, standing, room_tokens)
                if warm_decode_prefill:
                    self.time_warm_up("decode_prefill", self.warm_decode_prefill)

    def warm_decode_prefill(self) -> None:
        """Prefills as decoding batches and their joins start (rows padded on the left, an attention
        mask, a Hugging Face cache), at two sizes: a new server process ran that path for the first
        time inside the evaluation's first decoding batch (kernels loaded, transformers' mask code).
        Then the bounds of each one's mask, as the static decoder's start reads them: the first
        decoding batch's start took 16 ms in them against 0.5 ms in later batches (the kernels'
        first launches; an H100, docs/benchmarks.md, session 21)."""
        vocab = self.model.config.vocab_size
        for rows, length in ((2, 8), (16, 48)):
            seqs = [[1 + (7 * i + j) % (vocab - 1) for j in range(length - i % 3)] for i in range(rows)]
            mask = self._prefill([PrefixGroup([Row(prompt_ids=s, max_new_tokens=2) for s in seqs])], True, False)[3]
            decode_attention.row_bounds(mask)

    def time_warm_up(self, part: str, prepare, *args, **kwargs) -> None:
        """Run one part of the server's warm-up; its seconds (the GPU's work included) go to
        `warm_up_seconds`."""
        started = time.monotonic()
        prepare(*args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.warm_up_seconds[part] = round(time.monotonic() - started, 3)

    def _fill_prefixes(self, groups: list[PrefixGroup]) -> None:
        """Prefill (and store) the prefixes no earlier batch stored: by packed-graph replays, several
        prefixes side by side in each, or else each by a model call."""
        started = time.perf_counter()
        new = [g for g in groups if g.length and g.cache is None]
        prefixes = [g.rows[0].prompt_ids[: g.length] for g in new]
        caches = self.graphs.prefix_caches(prefixes) if self.graphs is not None and new else None
        for i, (group, tokens) in enumerate(zip(new, prefixes, strict=True)):
            group.cache = caches[i] if caches is not None else None
            if group.cache is None:
                prefix = torch.tensor([tokens], dtype=torch.long, device=self.device)
                group.cache = self.model(input_ids=prefix, use_cache=True, **self._keep(1)).past_key_values
            if self.prefixes is not None:
                self.prefixes.add(tokens, group.cache)
        self.last_prefix_fills = (len(new), time.perf_counter() - started if new else 0.0)

    def _prefix_caches(self, groups: list[PrefixGroup]) -> Any:
        """One cache holding each row's prefix (prefilling those no earlier batch stored), or None."""
        self._fill_prefixes(groups)
        if len(groups) == 1:
            return expanded(groups[0].cache, len(groups[0].rows))
        return gathered([(g.cache if g.length else None, g.length, len(g.rows)) for g in groups])

    def _count_prefixes(self, groups: list[PrefixGroup]) -> None:
        self.last_shared_prefix = max(g.length for g in groups)
        self.last_prefix_reused = any(g.length and g.cache is not None for g in groups)
        # Prompt tokens not prefilled: all of a stored prefix's, all but one row's of a new one.
        self.last_skipped_tokens = sum(
            g.length * (len(g.rows) if g.cache is not None else len(g.rows) - 1) for g in groups if g.length
        )

    def _packs(self, rows: list[Row]) -> bool:
        limit = self.packed_max_length
        return self.packing and (limit is None or max(len(r.prompt_ids) for r in rows) <= limit)

    def _packed_prefill(self, groups: list[PrefixGroup]) -> torch.Tensor | None:
        """The last position's logits (fp32) of every row, from one forward of the rows' own tokens
        packed side by side (packed.py); None if the model did not attend through packed attention."""
        self._count_prefixes(groups)
        self._fill_prefixes(groups)  # sets last_prefix_fills
        self.last_captures = 0
        self.last_launch_steps = []
        packed_groups, ids, positions, lengths, spans = _packed_inputs(groups)
        packed_rows = [r for g in packed_groups for r in g.rows]
        last_token = {id(row): end - 1 for row, end in zip(packed_rows, itertools.accumulate(lengths), strict=True)}
        keep = [last_token[id(row)] for group in groups for row in group.rows]  # in the caller's row order
        if self.graphs is not None:
            captures = self.graphs.captures
            logits = self.graphs.forward(ids, positions, lengths, spans, keep)
            self.last_captures = self.graphs.captures - captures
            self.last_launch_steps = self.graphs.last_steps
            if logits is not None:
                return logits
        plan = packed.PackedPlan(lengths, spans, self.device)
        with packed.active(self.model, plan):
            out = self.model(
                input_ids=torch.tensor([ids]).to(self.device, non_blocking=True),
                position_ids=torch.tensor([positions]).to(self.device, non_blocking=True),
                use_cache=False,
                logits_to_keep=torch.tensor(keep).to(self.device, non_blocking=True),
            )
        if len(plan.layers_seen) != self.model.config.num_hidden_layers:
            # A layer attended without us, over the whole packed sequence: its results are wrong.
            log.warning("packed attention was not used by every layer; single-token batches are padded from now on")
            self.packing = False
            return None
        return out.logits[0].float()

    def _prefill(self, groups: list[PrefixGroup], use_cache: bool, all_logits: bool):
        """Returns (logits of the last position in fp32, every position's logits or None, cache, mask, next positions)."""
        rows = [r for g in groups for r in g.rows]
        lengths = [g.length for g in groups for _ in g.rows]
        self._count_prefixes(groups)
        if self.last_shared_prefix:
            cache = self._prefix_caches(groups)
            ids, suffix_mask = self._left_pad([r.prompt_ids[length:] for r, length in zip(rows, lengths, strict=True)])
            # Each row's prefix ends where the cache ends: shorter ones are padded on the left.
            width = self.last_shared_prefix
            starts = torch.tensor([width - length for length in lengths], device=self.device)
            prefix_mask = (torch.arange(width, device=self.device)[None, :] >= starts[:, None]).long()
            mask = torch.cat([prefix_mask, suffix_mask], dim=1)
            offsets = torch.tensor(lengths, device=self.device)[:, None]
            positions = self._positions(suffix_mask, offset=offsets)
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                **self._keep(1),
            )
        else:
            ids, mask = self._left_pad([r.prompt_ids for r in rows])
            positions = self._positions(mask)
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=use_cache,
                **self._keep(0 if all_logits else 1),
            )
        logits = out.logits
        last = logits[:, -1, :].float()
        next_positions = positions[:, -1] + 1
        cache = out.past_key_values if use_cache else None
        return last, (logits if all_logits else None), cache, mask, next_positions, ids

    # --- choosing tokens -----------------------------------------------------------------------

    @staticmethod
    def _sample(logits: torch.Tensor, row: Row) -> int:
        probs = torch.softmax(logits / row.temperature, dim=-1)
        sorted_probs, order = probs.sort(descending=True)
        if row.top_p < 1.0:
            # Keep the smallest set whose mass reaches top_p; the most likely token always stays.
            keep = (sorted_probs.cumsum(0) - sorted_probs) < row.top_p
            sorted_probs = sorted_probs * keep
        cdf = sorted_probs.cumsum(0)
        u = torch.rand((), generator=row.generator).item() * cdf[-1].item()
        j = int(torch.searchsorted(cdf, torch.tensor([u], device=cdf.device, dtype=cdf.dtype), right=True).item())
        nonzero = int((sorted_probs > 0).sum().item())
        return int(order[min(j, max(nonzero - 1, 0))].item())

    def _choose(self, logits: torch.Tensor, rows: list[Row]) -> None:
        """Pick the next token of every unfinished row from fp32 `logits` (B × vocab) and record it."""
        logprobs, choices, finite = greedy_choice(logits)
        for i, row in enumerate(rows):
            if not row.finished and not row.greedy:
                choices[i] = self._sample(logits[i], row)
        chosen = logprobs.gather(1, choices[:, None])[:, 0]
        self._record(rows, choices.tolist(), chosen.tolist(), finite.tolist())

    def _launch_choice(self, logits: torch.Tensor, rows: list[Row], start: Any) -> LaunchedBatch:
        """`_choose` for greedy rows, its results copied to the host behind the GPU's queued work."""
        chosen = torch.empty(3, len(rows), dtype=torch.float64, device=logits.device)
        write_choice(logits, chosen)
        choices = static_decode.Launched(*self.staging.from_device(chosen), len(rows))
        return LaunchedBatch(rows, choices, self._record, start)

    def _record(self, rows: list[Row], choices: list[int], chosen: list[float], finite: list[bool]) -> None:
        for row, token, logprob, ok in zip(rows, choices, chosen, finite, strict=True):
            if row.finished:
                continue
            if not ok:
                row.error = "the model produced NaN or infinite logits"
                row.finished, row.finish_reason = True, "error"
            elif token in self.eos_ids:
                row.finished, row.finish_reason = True, "eos"
            else:
                row.tokens.append(token)
                row.logprobs.append(logprob)
                if len(row.tokens) >= row.max_new_tokens:
                    row.finished, row.finish_reason = True, "length"
                elif row.stop_sequences and self._hit_stop(row):
                    row.finished, row.finish_reason = True, "stop"

    def _hit_stop(self, row: Row) -> bool:
        text = self.tokenizer.decode(row.tokens)
        return any(stop in text for stop in row.stop_sequences if stop)

    def _prompt_logprobs(self, rows: list[Row], logits: torch.Tensor, ids: torch.Tensor) -> None:
        width = ids.shape[1]
        for i, row in enumerate(rows):
            if not row.echo:
                continue
            n = len(row.prompt_ids)
            start = width - n
            values = [0.0]
            if n > 1:
                row_logits = logits[i, start : width - 1].float()
                if not torch.isfinite(row_logits).all():
                    row.error = "the model produced NaN or infinite logits"
                    row.finished, row.finish_reason = True, "error"
                    continue
                lp = torch.log_softmax(row_logits, dim=-1).gather(1, ids[i, start + 1 :, None])[:, 0]
                values += lp.tolist()
            row.prompt_logprobs = values

    # --- the whole batch -----------------------------------------------------------------------

    @contextmanager
    def _running(self) -> Iterator[None]:
        """What every forward of the engine runs in: inference mode, the engine's attention and the
        fused layers (a CUDA graph captured outside it would replay other kernels)."""
        with torch.inference_mode(), engine_attention(self.model), fused.active(self.model):
            yield

    def generate(self, rows: list[Row], joining: Joining | None = None, *, defer: bool = False) -> list[Row]:
        """Fill in tokens, logprobs, prompt logprobs (echo rows) and finish reasons of every row.
        `joining`: while the rows decode over the static cache, rows it gives join them (continuous
        batching); they are filled in too, and listed in `last_joined`. `defer`: a packed batch of
        greedy rows returns once its work is queued, `last_launched` set; its `finish()` fills them in."""
        self.last_joined = []
        self.last_launched = None
        if not rows:
            return rows
        with self._running():
            return self._generate(rows, joining, defer)

    def _generate(self, rows: list[Row], joining: Joining | None = None, defer: bool = False) -> list[Row]:
        began = time.perf_counter()
        use_cache = any(r.needs_decode for r in rows)
        all_logits = any(r.echo for r in rows)
        # Every position's logits (echo) come from a whole prompt's own forward: nothing shared.
        groups = [PrefixGroup(rows)] if all_logits else self._groups(rows, decoding=use_cache)
        rows = [r for g in groups for r in g.rows]  # grouped; results stay in the Row objects
        for row in rows:
            if row.max_new_tokens <= 0 and not row.finished:
                row.finished, row.finish_reason = True, "length"
        self.last_decode_steps = 0
        self.last_decode_times = {}
        self.last_packed = not use_cache and not all_logits and self._packs(rows)
        if self.last_packed:
            start = None
            if defer and self.device.type == "cuda":  # the GPU's time for the batch (pipeline.Pace)
                start = torch.cuda.Event(enable_timing=True)
                start.record()
            last = self._packed_prefill(groups)
            if last is not None:
                self.last_launch_seconds = time.perf_counter() - began
                if defer and all(r.greedy for r in rows):
                    self.last_launched = self._launch_choice(last, rows, start)
                else:
                    self._choose(last, rows)
                return rows
            self.last_packed = False
        # Host times before the decode loop (its `last_decode_times`): the start, capture seconds so far,
        # the buffers made before the prefill, and when the prefill's kernels were launched.
        marks = {"began": began, "captured": self.static.capturer.seconds if self.static is not None else 0.0}
        static = self.static is not None and use_cache and not all_logits
        marks["reserve"] = self._reserve(groups) if static else 0.0
        written = self._graph_prefill(groups) if static and graph_decode_prefill else None
        if written is not None:  # the keys and values are in the static decoder's buffers already (cache None)
            (rows, last, mask, next_pos, bounds), logits, cache = written, None, None
            # The decoder's start queued behind the prefill's kernels, before the first tokens are read
            # (which waits for them): its host time no longer idles the GPU.
            marks["launched"] = time.perf_counter()
            self.static.start(None, mask, next_pos, max(r.max_new_tokens for r in rows), bounds)
            marks["early_start"] = time.perf_counter() - marks["launched"]
        else:
            last, logits, cache, mask, next_pos, ids = self._prefill(groups, use_cache, all_logits)
        marks.setdefault("launched", time.perf_counter())
        if logits is not None:
            self._prompt_logprobs(rows, logits, ids)
            del logits
        self._choose(last, rows)
        live = rows
        if (cache is not None or written is not None) and self.static is not None and any(not r.finished for r in rows):
            self._decode_static(rows, cache, mask, next_pos, joining, marks)
            return rows
        tokens = torch.tensor([r.tokens[-1] if r.tokens else self.pad_id for r in rows], device=self.device)
        while any(not r.finished for r in live):
            unfinished = [i for i, r in enumerate(live) if not r.finished]
            # Dropping finished rows from the cache costs a copy; only worth it once many are done.
            if len(unfinished) * 4 <= len(live) * 3:
                index = torch.tensor(unfinished, device=self.device)
                map_cache(cache, lambda t, index=index: t.index_select(0, index))
                mask, next_pos, tokens = mask[index], next_pos[index], tokens[index]
                live = [live[i] for i in unfinished]
            mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=self.device)], dim=1)
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                past_key_values=cache,
                use_cache=True,
                **self._keep(1),
            )
            cache = out.past_key_values
            self.last_decode_steps += 1
            next_pos = next_pos + 1
            self._choose(out.logits[:, -1, :].float(), live)
            tokens = torch.tensor([r.tokens[-1] if r.tokens else self.pad_id for r in live], device=self.device)
        return rows

    def _graph_prefill(
        self, groups: list[PrefixGroup]
    ) -> tuple[list[Row], torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """A decoding batch's prefill as packed-graph replays (PackedGraphs.forward with a `kv_sink`)
        whose keys and values go straight into the buffers `_reserve` made, laid out as `_prefill`'s
        cache is (each row's prefix ending at the longest prefix's end, its own tokens at the end); the
        rows in their slots' order (groups with a prefix first, as packed batches are), the last
        positions' logits, the 2-D mask and the next positions. None where the graphs do not take the
        batch (checked before any prefix is filled): then `_prefill` runs. A 1.1 B generation batch's
        prefill took 17.7-20.8 ms against 46.6-50.0 ms by the forward on one H100 (docs/benchmarks.md,
        session 22)."""
        buffers = self.static.buffers if self.static is not None else None
        rows = [r for g in groups for r in g.rows]
        if self.graphs is None or buffers is None or not self._packs(rows):
            return None
        ordered = _packed_order(groups)
        lengths = [len(r.prompt_ids) - g.length for g in ordered for r in g.rows]
        longest_prefix = max(g.length for g in ordered)
        width = longest_prefix + max(lengths)
        prefixes = sum(1 for g in ordered if g.length)
        if len(rows) > buffers.rows or width > buffers.columns or self.graphs.chunks(lengths, prefixes, True) is None:
            return None
        self._count_prefixes(groups)
        self._fill_prefixes(groups)
        ordered, ids, positions, lengths, spans = _packed_inputs(groups)
        rows = [r for g in ordered for r in g.rows]
        slots: list[int] = []  # each packed token's row and column in the buffers
        columns: list[int] = []
        next_positions: list[int] = []
        own_from: list[int] = []  # each row's first own column; its prefix's first column
        prefix_from: list[int] = []
        prefixed: list[tuple[PrefixGroup, int, int]] = []  # each group with a prefix: its first and end slot
        slot = 0
        for g in ordered:
            first = slot
            for r in g.rows:
                own = len(r.prompt_ids) - g.length
                next_positions.append(g.length + own)
                slots += [slot] * own
                columns += range(width - own, width)
                own_from.append(width - own)
                prefix_from.append(longest_prefix - g.length)
                slot += 1
            if g.length:
                prefixed.append((g, first, slot))
        # Through arrays: torch.tensor() of a list looks at each of a batch's thousands of elements; from
        # pinned memory: a copy from pageable memory waits for every kernel queued before it.
        row_index, column_index = self.staging.longs(array("q", slots), array("q", columns))

        def sink(kv, s: int, e: int) -> None:
            # All layers at once: [layers, tokens, kv_heads, dim] into [layers, rows, kv_heads, columns, dim]
            # at each token's (row, column); indexing puts the tokens' dimension first.
            r, c = row_index[s:e], column_index[s:e]
            for chunk, target in zip(kv, buffers.stacked, strict=True):
                target[:, r, :, c] = chunk[:, : e - s].transpose(0, 1)

        ends = list(itertools.accumulate(lengths))
        last = self.graphs.forward(ids, positions, lengths, spans, [end - 1 for end in ends], kv_sink=sink)
        if last is None:
            return None
        # What only the decoder's start reads, queued behind the replays while the GPU runs them (session
        # 26's trace: before them, this host work idled the GPU after the prefixes' fill).
        for g, first, end in prefixed:
            _copy_prefix(cache_tensors(g.cache), buffers, first, end, longest_prefix - g.length, longest_prefix)
        # Each row's bounds from its two column ranges, on the host: the start then waits for nothing
        # (session 25: the start's copies and the bounds' sync, after the prefill, idled the GPU).
        bounds, fits = decode_attention.runs_bounds(
            [[(p, longest_prefix), (o, width)] for p, o in zip(prefix_from, own_from, strict=True)], width
        )
        next_pos, bounds, own_start, prefix_start = self.staging.longs(
            array("q", next_positions), array("q", bounds), array("q", own_from), array("q", prefix_from)
        )
        # Each row's own columns, and its prefix's (ending at the longest prefix's end), made on the GPU:
        # one comparison for the batch (session 26: built on the host it was ~0.5 ms of the prefill's).
        cols = torch.arange(width, device=self.device)
        mask = (cols >= own_start[:, None]) | ((cols >= prefix_start[:, None]) & (cols < longest_prefix))
        return rows, last, mask, next_pos, (bounds.view(len(rows), 3), fits)

    def _reserve(self, groups: list[PrefixGroup]) -> float:
        """Make the static decoder's buffers for the batch `_prefill` will give (its rows, its padded
        width: the longest prefix and the longest rest); the seconds it took."""
        started = time.perf_counter()
        rows = [r for g in groups for r in g.rows]
        width = max(g.length for g in groups) + max(len(r.prompt_ids) - g.length for g in groups for r in g.rows)
        self.static.reserve(len(rows), width, max(r.max_new_tokens for r in rows))
        return time.perf_counter() - started

    def _decode_static(
        self,
        rows: list[Row],
        cache: Any,
        mask: torch.Tensor,
        next_pos: torch.Tensor,
        joining: Joining | None,
        marks: dict[str, float],
    ) -> None:
        """The decode loop over the static cache: finished rows ride along (their logits are ignored)
        so every step has the shape its graph was captured for, until a joining row takes their slot.
        `marks` (from `_generate`): the buffers made before the prefill count in the start, and so does
        the start itself where it was made before the first tokens were read (`early_start`)."""
        started, began = time.perf_counter(), marks["began"]
        made_early = marks["reserve"] + marks.get("early_start", 0.0)  # the start's parts made before the loop
        max_new = max(r.max_new_tokens for r in rows)
        if "early_start" not in marks:
            self.static.start(cache, mask, next_pos, max_new)
        del cache
        slots = list(rows)
        self._feed(range(len(slots)), slots)
        times = self.last_decode_times = {
            "prefill": started - began - made_early, "start": time.perf_counter() - started + made_early,
            "joins": 0.0, "join_count": 0,
            "prefill_launch": marks["launched"] - began - marks["reserve"],
            "captures": self.static.capturer.seconds - marks["captured"],
            "joined": [],  # each join: seconds from the batch's start, rows, seconds it took, of them captures
        }  # fmt: skip
        queued = None  # a greedy step launched and not yet read: (its choices, the slots' rows then)
        while True:
            # A queued step gives every row in it one more token: launch no step that no row needs.
            ahead = queued is not None
            if all(r.finished or len(r.tokens) + ahead >= r.max_new_tokens for r in slots):
                if queued is None:
                    break
                self._record(queued[1], *queued[0].get())
                queued = None
                continue
            if joining is not None:
                joined_at, before, count = time.perf_counter(), slots, len(self.last_joined)
                captured = self.static.capturer.seconds
                slots = self._join(joining, slots)
                took = time.perf_counter() - joined_at
                times["joins"] += took
                if slots is not before:  # a new list: rows joined
                    times["join_count"] += 1
                    times["joined"].append([round(joined_at - began, 6), len(self.last_joined) - count, round(took, 6),
                                            round(self.static.capturer.seconds - captured, 6)])  # fmt: skip
            if queued_steps and all(r.greedy or r.finished for r in slots):
                # The GPU feeds each step the step before's choices; the host reads them one step behind.
                launched = self.static.launch()
                self.last_decode_steps += 1
                if queued is not None:
                    self._record(queued[1], *queued[0].get())
                queued = (launched, list(slots))
                continue
            if queued is not None:  # a sampled row: the host chooses every token before the next step
                self._record(queued[1], *queued[0].get())
                queued = None
                continue
            logits = self.static.step([r.tokens[-1] if r.tokens else self.pad_id for r in slots])
            self.last_decode_steps += 1
            self._choose(logits, slots)
        times["total"] = time.perf_counter() - started + made_early

    def _feed(self, places, rows: list[Row]) -> None:
        self.static.feed(list(places), [r.tokens[-1] if r.tokens else self.pad_id for r in rows])

    def join_tokens(self, slots: list[Row], rows: list[Row]) -> int:
        """Cache tokens (slots × columns, unpadded, as the batch limits count them) the running static
        batch needs once `rows` join it; their prompts' width is estimated by the longest."""
        free = sum(1 for r in slots if r.finished)
        width = max(len(r.prompt_ids) for r in rows)
        used, end = self.static.join_shape(len(slots) + max(0, len(rows) - free), width,
                                           max(r.max_new_tokens for r in rows))  # fmt: skip
        return used * end

    def _join(self, joining: Joining, slots: list[Row]) -> list[Row]:
        """Prefill the rows `joining` gives and put them in the batch: finished rows' slots first."""
        new = joining.take(self, slots)
        if not new:
            return slots
        counts = (self.last_shared_prefix, self.last_prefix_reused, self.last_skipped_tokens)
        groups = self._groups(new, decoding=True)
        new = [r for g in groups for r in g.rows]
        free = [i for i, r in enumerate(slots) if r.finished][: len(new)]
        places = free + list(range(len(slots), len(slots) + len(new) - len(free)))
        try:
            last, _, cache, mask, next_pos, _ = self._prefill(groups, True, False)
            self.static.join(cache, mask, next_pos, max(r.max_new_tokens for r in new), places)
        except torch.cuda.OutOfMemoryError:
            self.last_shared_prefix, self.last_prefix_reused, self.last_skipped_tokens = counts
            for row in new:
                row.reset()
            joining.decline(new)
            return slots
        del cache
        self._choose(last, new)
        self._feed(places, new)
        # The batch's counters cover its joined rows too.
        self.last_shared_prefix = max(counts[0], self.last_shared_prefix)
        self.last_prefix_reused = counts[1] or self.last_prefix_reused
        self.last_skipped_tokens += counts[2]
        self.last_joined += new
        slots = list(slots)
        for place, row in zip(places, new, strict=True):
            if place < len(slots):
                slots[place] = row
            else:
                slots.append(row)
        return slots
