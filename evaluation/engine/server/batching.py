"""Dynamic batching: HTTP threads hand rows to one model thread, which gathers whatever arrived
together, orders it by length and runs it in as few forward passes as memory allows.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from evaluation.engine.loading import allocator_cap_bytes
from evaluation.engine.server.generation import (
    FORWARD_FLOPS,
    MIN_SHARED_PREFIX,
    BatchGenerator,
    Row,
    adjacent_shared,
    forward_worth_tokens,
    prefix_groups,
)
from evaluation.engine.server.pipeline import POLL_SECONDS, Inflight, Pace
from evaluation.engine.server.profiling import BatchProfiler
from evaluation.engine.server.stats import Stats

log = logging.getLogger(__name__)


@dataclass
class Limits:
    max_batch_size: int = 32
    # Padded (prompt + new) tokens of one batch: bounds the KV cache and activations.
    max_batch_tokens: int = 16384
    # Padded prompt tokens of one batch whose every position's logits are kept (echo_prompt).
    max_echo_tokens: int = 4096
    # Memory for the caches of few-shot prefixes kept from one batch to the next (PrefixStore), and
    # the batch tokens it is worth: batches that leave the store in place are that much smaller.
    # Decoding batches use the whole limit instead and empty the store when they need its room: for
    # them more rows per step is worth more than a prefix kept.
    prefix_store_bytes: int = 64 * 1024**2
    prefix_store_tokens: int = 0
    # Single-token batches packed into one sequence (packed.py) hold only the rows' own tokens and
    # keep no cache: they are bounded by those tokens' activations.
    max_packed_tokens: int = 16384
    max_packed_rows: int = 1024
    # Tokens a single-token batch should compute before it starts (0: start with what arrived; see
    # fill_tokens). A batch's host work (Python, ~400 kernel launches) is about the same for 40 rows
    # as for 80; on a fast GPU a small model's batch of what HELM's threads send in a few milliseconds
    # is done on the GPU long before the host has launched it. Waiting a little longer for more rows
    # (Scheduler._fill) shares that cost among more of them, at the price of each request's latency.
    fill_tokens: int = 0
    # Seconds a decoding batch waits for more decoding rows while they keep arriving (0: start at
    # once, later rows join it; see Scheduler._fill).
    decode_fill_seconds: float = 0.0
    # Padded prompt tokens that putting two runs' decoding rows in one batch may add to its prefill
    # (`_together`): on a GPU a forward's worth (what the join it saves costs), on a CPU none.
    merge_padding_tokens: int = 0

    def tokens_beside_store(self) -> int:
        return max(self.max_batch_tokens - self.prefix_store_tokens, self.max_batch_tokens // 2)


@dataclass
class Work:
    rows: list[Row]
    done: threading.Event = field(default_factory=threading.Event)
    on_done: Callable[[], None] | None = None  # called by the model thread once the rows are done

    @property
    def joinable(self) -> bool:
        """Rows that may join a running decode batch (see Scheduler.take)."""
        return _decoding(self.rows)


def _fail(rows: list[Row], e: Exception) -> None:
    for row in rows:
        row.error, row.finished, row.finish_reason = f"internal error: {type(e).__name__}: {e}", True, "error"


def _decoding(rows: list[Row]) -> bool:
    """Rows of a decode batch: more than one new token, no echo (planned batches are of one kind)."""
    return all(r.needs_decode and not r.echo for r in rows)


def _single_token(rows: list[Row]) -> bool:
    return all(not r.echo and not r.needs_decode for r in rows)


def _kind(rows: list[Row]) -> str:
    return "decode" if _decoding(rows) else "single" if _single_token(rows) else "other"


def _cost(rows: list[Row]) -> int:
    width = max(len(r.prompt_ids) for r in rows)
    new = max(max(r.max_new_tokens, 1) for r in rows)
    return len(rows) * (width + new)


# A run's few-shot prompts share hundreds of tokens (instructions and examples); runs of different
# tasks, or from several helm-run processes, arrive interleaved and may share a little too (common
# instructions). `prefix_groups` finds each run's rows. Decoding batches are planned one run's rows
# each (clusters of fewer than MIN_PREFIX_GROUP rows are batched by length with the rest), then put
# together while the limits allow, so a split by the limits keeps each run's rows apart. Single-token
# (scoring) batches take several runs' rows at once, each row starting from its run's prefix: one
# forward for everything that arrived together costs less than one per run.
MIN_PREFIX_GROUP = 8


def prefix_clusters(rows: list[Row]) -> tuple[list[list[Row]], list[Row]]:
    """(clusters of rows sharing a long prefix, the rows in none)."""
    clusters: list[list[Row]] = []
    mixed: list[Row] = []
    for indices, shared in prefix_groups([r.prompt_ids for r in rows]):
        group = [rows[i] for i in indices]
        if len(group) >= MIN_PREFIX_GROUP and shared >= MIN_SHARED_PREFIX:
            clusters.append(group)
        else:
            mixed.extend(group)
    return clusters, mixed


def _grouped_costs(rows: list[Row]) -> list[int]:
    """For rows in prefix order, the cost of each leading run of them as one batch of several
    prefixes: the cache is as wide as the longest prefix plus the longest remainder, which can be
    wider than any one prompt. A run's rows cut off at the end share what those few share (one
    row alone: nothing, unless a stored prefix serves it)."""
    seqs = [r.prompt_ids for r in rows]
    links = adjacent_shared(seqs)
    starts = {min(indices) for indices, _ in prefix_groups(seqs, links=links)}
    costs: list[int] = []
    prefix = rest = 0  # over the groups before the current one
    shared: int | None = None  # of the current group's rows so far (None: one row)
    longest = 0
    for i, seq in enumerate(seqs):
        if i in starts:
            if i:
                prefix, rest = max(prefix, shared or 0), max(rest, longest - (shared or 0))
            shared, longest = None, len(seq)
        else:
            link = links[i - 1]
            shared = link if shared is None else min(shared, link)
            longest = max(longest, len(seq))
        own = shared or 0
        costs.append((i + 1) * (max(prefix, own) + max(rest, longest - own) + 1))
    return costs


def _own_tokens(rows: list[Row]) -> list[int]:
    """For rows in prefix order, the tokens of each a packed batch computes: those after its run's
    shared prefix (a lone row: all of them)."""
    seqs = [r.prompt_ids for r in rows]
    own = [len(s) for s in seqs]
    for indices, shared in prefix_groups(seqs, links=adjacent_shared(seqs)):
        if len(indices) > 1:
            for i in indices:
                own[i] -= min(shared, own[i] - 1)
    return own


def _packed_in_prefix_order(rows: list[Row], limits: Limits) -> list[list[Row]]:
    """Single-token rows for packed batches: consecutive in prefix order, as many as the packed
    limits take."""
    pending = sorted(rows, key=lambda r: r.prompt_ids)
    batches: list[list[Row]] = []
    start, total = 0, 0
    for i, own in enumerate(_own_tokens(pending)):
        if i > start and (total + own > limits.max_packed_tokens or i - start >= limits.max_packed_rows):
            batches.append(pending[start:i])
            start, total = i, 0
        total += own
    batches.append(pending[start:])
    return batches


def plan_batches(rows: list[Row], limits: Limits, *, packed: bool = False) -> list[list[Row]]:
    """Split rows into batches within the size and token limits, same kind together: echo rows by
    prompt length (little padding wasted), decoding rows by run and then by length (runs put together
    where the limits allow), single-token rows
    in prefix order (several runs per batch, each row from its run's prefix; `packed`: the generator
    packs them into one sequence)."""
    by_kind: dict[tuple[bool, bool], list[Row]] = {}
    for row in rows:
        by_kind.setdefault((row.echo, row.needs_decode), []).append(row)
    batches: list[list[Row]] = []
    for (echo, decode), kind_rows in sorted(by_kind.items(), key=lambda kv: kv[0]):
        if echo:  # every position's logits are kept: no prefix is shared
            batches += _by_length(kind_rows, limits, limits.max_echo_tokens, echo=True)
        elif decode:
            clusters, mixed = prefix_clusters(kind_rows)
            runs: list[list[Row]] = []
            for group in clusters + ([mixed] if mixed else []):
                runs += _by_length(group, limits, limits.max_batch_tokens, echo=False)
            batches += _together(runs, limits)
        elif packed:
            batches += _packed_in_prefix_order(kind_rows, limits)
        else:
            batches += _in_prefix_order(kind_rows, limits)
    return batches


def _padded_prompts(rows: list[Row]) -> int:
    return len(rows) * max(len(r.prompt_ids) for r in rows)


def _together(runs: list[list[Row]], limits: Limits) -> list[list[Row]]:
    """Decoding batches of one run each, put together while the limits allow and the prefill's padding
    grows by at most `merge_padding_tokens`: one batch of two runs is one prefill and one graph
    capture, where the second run's batch would join the first at its first step (a prefill of its
    own, the buffers grown and captured again: 52-86 ms of a 1.1 B model's host time). Each row still
    starts from its run's prefix (BatchGenerator._groups)."""
    merged: list[list[Row]] = []
    for batch in runs:
        if merged:
            both = merged[-1] + batch
            padding = _padded_prompts(both) - _padded_prompts(merged[-1]) - _padded_prompts(batch)
            fits = len(both) <= limits.max_batch_size and _cost(both) <= limits.max_batch_tokens
            if fits and padding <= limits.merge_padding_tokens:
                merged[-1] = both
                continue
        merged.append(batch)
    return merged


def _by_length(group: list[Row], limits: Limits, tokens: int, *, echo: bool) -> list[list[Row]]:
    group = sorted(group, key=lambda r: len(r.prompt_ids))
    batches: list[list[Row]] = []
    current: list[Row] = []
    for row in group:
        candidate = current + [row]
        too_many = len(candidate) > limits.max_batch_size
        if echo:
            too_big = len(candidate) * max(len(r.prompt_ids) for r in candidate) > tokens
        else:
            too_big = _cost(candidate) > tokens
        if current and (too_many or too_big):
            batches.append(current)
            current = [row]
        else:
            current = candidate
    if current:
        batches.append(current)
    return batches


def _in_prefix_order(rows: list[Row], limits: Limits) -> list[list[Row]]:
    """Single-token rows, several runs per batch: consecutive in prefix order, so that a batch split
    by the limits still holds few prefixes."""
    pending = sorted(rows, key=lambda r: r.prompt_ids)
    tokens = limits.tokens_beside_store()
    batches: list[list[Row]] = []
    while pending:
        costs = _grouped_costs(pending[: limits.max_batch_size])
        take = max(1, sum(1 for cost in costs if cost <= tokens))
        batches.append(pending[:take])
        pending = pending[take:]
    return batches


class Scheduler:
    """Owns the model thread. `submit` blocks the calling HTTP thread until its rows are done."""

    def __init__(
        self,
        generator: BatchGenerator,
        stats: Stats,
        limits: Limits,
        *,
        gather_seconds: float = 0.002,
        max_wait_seconds: float = 0.02,
        fill_seconds: float = 0.06,
        fill_gap_seconds: float = 0.01,
        out_of_memory_message: str = "the model ran out of GPU memory on a single request",
        joins: bool = True,
        pipelined: bool = False,
    ):
        self.generator = generator
        self.stats = stats
        self.limits = limits
        self.gather_seconds = gather_seconds
        self.max_wait_seconds = max_wait_seconds
        self.fill_seconds = fill_seconds
        self.fill_gap_seconds = fill_gap_seconds
        self._tokens_per_row: float | None = None  # computed by the last packed batch, a row on average
        self.out_of_memory_message = out_of_memory_message
        self._queue: queue.Queue[Work | None] = queue.Queue()
        # Continuous batching (`take`): rows arriving while a decode batch runs join it.
        self.joins = joins
        self._waiting: list[Work] = []  # arrived, not yet run (they could not join)
        self._active: list[Work] = []  # gathered or joined, not yet answered
        self._planned: list[list[Row]] = []  # this gather's batches not yet started
        self._stopping = False
        self._declined = False
        self.pipelined = pipelined
        self._inflight: Inflight | None = None  # a packed batch launched, not yet read (pipelined)
        self.pace = Pace()
        self._busy_until = 0.0  # perf_counter() when the last recorded batch ended: busy time counts once
        self._thread = threading.Thread(target=self._loop, name="model", daemon=True)
        self.profiler = BatchProfiler.from_env()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def submit(self, rows: list[Row]) -> None:
        self._arrived(rows)
        work = Work(rows)
        self._queue.put(work)
        work.done.wait()

    def submit_async(self, rows: list[Row], on_done: Callable[[], None]) -> None:
        self._arrived(rows)
        self._queue.put(Work(rows, on_done=on_done))

    def _arrived(self, rows: list[Row]) -> None:
        if self.stats.timeline is not None:  # nothing computed per request without ENGINE_TIMELINE
            self.stats.event("arrive", rows=len(rows), tokens=sum(len(r.prompt_ids) for r in rows),
                             work=_kind(rows))  # fmt: skip

    def _take_more(self, items: list[Work], deadline: float, gap: float, enough: Callable[[], bool]) -> bool:
        """Append to `items` what arrives until `deadline`, a pause of `gap` seconds, or `enough()`;
        True if the stop signal came."""
        while not enough():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                item = self._queue.get(timeout=min(left, gap))
            except queue.Empty:
                return False
            if item is None:
                return True
            items.append(item)
        return False

    def _gather(self, first: Work) -> tuple[list[Work], bool]:
        """Collect requests arriving right after `first`: HELM's threads send theirs within milliseconds.
        Work that arrived while the last batch ran (and did not join it) comes first. While a batch runs
        on the GPU, only until the next must be launched to follow it at once (Pace), or it is done: its
        answers wait for this gather's first launch."""
        if self._inflight is not None and self._inflight.launched.ready():
            self._settle()  # nothing to overlap with: its answers go out first
        items = [first]
        deadline = time.monotonic() + self.max_wait_seconds
        inflight = self._inflight
        if inflight is None:
            return items, self._take_more(items, deadline, self.gather_seconds, lambda: False)
        until = self.pace.gather_until(inflight)
        if until is not None:
            deadline = min(deadline, time.monotonic() + until - time.perf_counter())
        if self._take_more(items, deadline, self.gather_seconds, inflight.launched.ready):
            return items, True
        return items, self._take_queued(items)  # what has arrived goes too: it costs no wait

    def _take_queued(self, items: list[Work]) -> bool:
        """Append what is in the queue now; True if the stop signal came."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                return True
            items.append(item)

    def _next(self) -> Work | None:
        """The first work of the next gather. While a batch runs on the GPU, work arriving meanwhile; if
        none comes before it is done, it is read and answered first."""
        if self._waiting:
            first, self._waiting = self._waiting[0], self._waiting[1:]
            return first
        while self._inflight is not None:
            try:
                return self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._inflight.launched.ready():
                    self._settle()
        return self._queue.get()

    def _fill(self, items: list[Work], started: float) -> bool:
        """Single-token work too small to keep the GPU busy waits for more (Limits.fill_tokens), at
        most `fill_seconds` from the gather's start, and only while requests keep arriving: a pause of
        `fill_gap_seconds` means the senders have nothing more for now. Work of any other kind ends
        the wait (a decode batch is worth starting at once). True if the stop signal came."""
        rows = [r for item in items for r in item.rows]
        if self.limits.decode_fill_seconds and _decoding(rows):
            return self._fill_decoding(items, started)
        target = self.limits.fill_tokens
        if not target or not self.generator.packing:
            return False
        if not _single_token(rows):
            return False
        per_row = self._tokens_per_row or sum(len(r.prompt_ids) for r in rows) / len(rows)
        wanted = max(1, int(target / max(per_row, 1.0)))

        def enough() -> bool:
            return sum(len(item.rows) for item in items) >= wanted or not _single_token(items[-1].rows)

        if enough():
            return False
        waiting_since = time.monotonic()
        stopping = self._take_more(items, started + self.fill_seconds, self.fill_gap_seconds, enough)
        self.stats.add("filled_batches")
        self.stats.add("fill_wait_seconds", time.monotonic() - waiting_since)
        return stopping

    def _fill_decoding(self, items: list[Work], started: float) -> bool:
        """A decoding batch waits for the decoding rows still arriving (up to `decode_fill_seconds` from
        the gather's start, until a pause of `fill_gap_seconds` or other work): rows that arrive a few
        milliseconds later would otherwise join it, each join a prefill and a larger shape of its own."""

        def enough() -> bool:
            full = sum(len(item.rows) for item in items) >= self.limits.max_batch_size
            return full or not _decoding(items[-1].rows)

        if enough():
            return False
        waiting_since = time.monotonic()
        stopping = self._take_more(items, started + self.limits.decode_fill_seconds, self.fill_gap_seconds, enough)
        self.stats.add("filled_batches")
        self.stats.add("fill_wait_seconds", time.monotonic() - waiting_since)
        return stopping

    def _loop(self) -> None:
        while True:
            first = self._next()
            if first is None:
                self._settle()
                return
            started = time.monotonic()
            items, stopping = self._gather(first)
            items, self._waiting = items + self._waiting, []
            if not stopping:
                stopping = self._fill(items, started)
            self._active = list(items)
            try:
                self.run([row for item in items for row in item.rows], leave_running=True)
            except Exception as e:  # the model thread must survive anything one batch does
                log.exception("batch failed")
                self._settle()
                _fail([row for item in self._active for row in item.rows if not row.finished], e)
            finally:
                if self._inflight is not None:  # this gather's last batch still runs: answered once read
                    self._inflight.items += self._active
                else:
                    for item in self._active:
                        self._answer(item)
                self._active = []
            if stopping or self._stopping:
                self._settle()
                return

    def _answer(self, item: Work) -> None:
        if item.done.is_set():
            return
        item.done.set()
        if item.on_done is not None:
            try:
                item.on_done()
            except Exception:  # e.g. the other end of a pipe is gone; the thread goes on
                log.exception("answering a request failed")

    # --- continuous batching: the generator's `Joining` ------------------------------------------

    def take(self, generator: BatchGenerator, slots: list[Row]) -> list[Row]:
        """Called by the generator before every step of a static decode batch: answers the requests
        whose rows are done, and hands over decoding rows that arrived meanwhile (or wait in this
        gather's later batches) while the batch stays within the limits. Nothing joins while other
        work waits: the batch then ends as planned, and that work runs next."""
        for item in self._active:
            if all(r.finished for r in item.rows):
                self._answer(item)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._stopping = True
                break
            self._waiting.append(item)
        if self._stopping or self._declined or any(not w.joinable for w in self._waiting):
            return []
        taken: list[Row] = []
        # This gather's later decode batches first, then what arrived since, each in order.
        while self._planned and _decoding(self._planned[0]):
            if not self._fits(generator, slots, taken + self._planned[0]):
                return self._clear_store_for(generator, slots, taken)
            taken += self._planned.pop(0)
        while self._waiting:
            if not self._fits(generator, slots, taken + self._waiting[0].rows):
                break
            item = self._waiting.pop(0)
            taken += item.rows
            self._active.append(item)
        return self._clear_store_for(generator, slots, taken)

    def _clear_store_for(self, generator: BatchGenerator, slots: list[Row], taken: list[Row]) -> list[Row]:
        prefixes = self.generator.prefixes
        if taken and prefixes is not None and generator.join_tokens(slots, taken) > self.limits.tokens_beside_store():
            prefixes.clear()  # as a decoding batch that needs the store's room does (see Limits)
        return taken

    def _fits(self, generator: BatchGenerator, slots: list[Row], rows: list[Row]) -> bool:
        live = sum(1 for r in slots if not r.finished)
        if live + len(rows) > self.limits.max_batch_size:
            return False
        return generator.join_tokens(slots, rows) <= self.limits.max_batch_tokens

    def decline(self, rows: list[Row]) -> None:
        """Rows that found no memory to join: they run after the batch, and nothing more joins it."""
        self._declined = True
        self.stats.add("declined_joins")
        self._planned.insert(0, rows)

    # --- batches ---------------------------------------------------------------------------------

    def run(self, rows: list[Row], *, leave_running: bool = False) -> None:
        """Run `rows` in the batches the limits allow; `leave_running` (the model thread, pipelined): the
        last batch may still be on the GPU when this returns (`_inflight`, read by `_settle`)."""
        self._planned = plan_batches(rows, self.limits, packed=self.generator.packing)
        while self._planned:
            self._run_batch(self._planned.pop(0))
        if not leave_running:
            self._settle()

    def _run_batch(self, batch: list[Row]) -> None:
        began = time.monotonic()
        started, cpu_started = time.perf_counter(), time.thread_time()
        prefixes = self.generator.prefixes
        if (
            prefixes is not None
            and not batch[0].echo
            and batch[0].needs_decode
            and _cost(batch) > self.limits.tokens_beside_store()
        ):
            prefixes.clear()  # a decoding batch that needs the store's room (see Limits)
        self._declined = False
        joining = self if self.joins and _decoding(batch) else None
        defer = self.pipelined and self.profiler is None and _single_token(batch)
        if not defer:
            self._settle()  # the batch before is answered before this one runs
        out_of_memory = ""  # torch's message, when the batch ran out of memory
        try:
            if self.profiler is None:
                self.generator.generate(batch, joining, defer=defer)
            else:
                self.profiler.run(batch, self.generator, joining)
        except torch.cuda.OutOfMemoryError as e:
            # Split after the handler: inside it the traceback's frames hold the failed attempt's
            # tensors, and the halves would run out of memory in turn.
            out_of_memory = str(e).split("\n")[0] or "out of memory"
        except Exception as e:  # one bad batch fails its own requests, not the server
            self._settle()
            batch = self._unanswered(batch + self.generator.last_joined)
            log.exception("batch of %d rows failed", len(batch))
            _fail(batch, e)
            return
        if out_of_memory:
            self._settle()
            self._after_out_of_memory(self._unanswered(batch + self.generator.last_joined), out_of_memory)
            return
        facts = self._facts()
        computed = 0  # prompt tokens the forward computed (a single-token batch's, for the fill and the pace)
        if _single_token(batch):
            computed = sum(len(r.prompt_ids) for r in batch) - facts["skipped_tokens"]
            if self.limits.fill_tokens and self.generator.packing:
                self._tokens_per_row = max(computed, len(batch)) / len(batch)
        launched = self.generator.last_launched
        # The batch before is read now: this one's work is queued behind it.
        self._settle()
        cpu_seconds = time.thread_time() - cpu_started
        if launched is not None:
            done_by = self.pace.launched(started, computed, facts["packed"]["launch"])
            self._inflight = Inflight(launched, batch, began, started, cpu_seconds, facts, computed, done_by)
        else:
            self._record(batch, began, started, cpu_seconds, facts)

    def _settle(self) -> None:
        """Read the batch left running on the GPU into its rows, record it, answer its gather."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        cpu_started = time.thread_time()
        try:
            inflight.launched.finish()
        except Exception as e:
            log.exception("reading a batch of %d rows failed", len(inflight.batch))
            _fail([r for r in inflight.batch if not r.finished], e)
        else:
            gpu_seconds, packed = inflight.launched.gpu_seconds(), inflight.facts["packed"]
            if gpu_seconds is not None:
                self.stats.add("packed_gpu_batches")
                self.stats.add("packed_gpu_seconds", gpu_seconds)
            if not packed["prefix_fills"] and not packed["captures"]:  # first-time costs would mislead it
                self.pace.timed(inflight.tokens, gpu_seconds)
        cpu_seconds = inflight.cpu_seconds + time.thread_time() - cpu_started
        self._record(inflight.batch, inflight.began, inflight.started, cpu_seconds, inflight.facts)
        for item in inflight.items:
            self._answer(item)

    def _facts(self) -> dict:
        """The generator's figures of the batch it just ran or launched (the next one overwrites them)."""
        g = self.generator
        times = getattr(g, "last_decode_times", None) or {}
        return {
            "joined": len(g.last_joined),
            "times": dict(times),
            "skipped_tokens": g.last_skipped_tokens,
            "prefix_reused": g.last_prefix_reused,
            "decode_steps": g.last_decode_steps,
            "packed": self._packed_times() if getattr(g, "last_packed", False) else None,
        }

    def _record(self, batch: list[Row], began: float, started: float, cpu_seconds: float, facts: dict) -> None:
        joined, times, packed = facts["joined"], facts["times"], facts["packed"]
        if joined:
            self.stats.add("joined_rows", joined)
        for key, name in (
            ("total", "decode_seconds"),
            ("prefill", "decode_prefill_seconds"),
            ("start", "decode_start_seconds"),
            ("joins", "decode_join_seconds"),
            ("join_count", "decode_joins"),
        ):
            if key in times:
                self.stats.add(name, times[key])
        ended = time.perf_counter()
        # A pipelined batch began while the one before still ran: the time they share counts once.
        seconds = ended - max(started, self._busy_until)
        self._busy_until = ended
        if packed:
            self.stats.add("packed_seconds", seconds)
            self.stats.add("packed_launch_seconds", packed["launch"])
        if self.stats.timeline is not None:
            self.stats.event("batch", began=round(began, 6), rows=len(batch), joined=joined, work=_kind(batch),
                             decode_steps=facts["decode_steps"],
                             decode={k: v for k, v in times.items() if k != "total"}, packed=packed)  # fmt: skip
        self.stats.record_batch(
            rows=len(batch) + joined,
            seconds=seconds,
            skipped_tokens=facts["skipped_tokens"],
            prefix_reused=facts["prefix_reused"],
            decode_steps=facts["decode_steps"],
            cpu_seconds=cpu_seconds,
        )

    def _packed_times(self) -> dict:
        fills, fill_seconds = self.generator.last_prefix_fills
        return {"launch": round(self.generator.last_launch_seconds, 6), "prefix_fills": fills,
                "prefix_fill": round(fill_seconds, 6), "captures": self.generator.last_captures,
                "steps": self.generator.last_launch_steps}  # fmt: skip

    def _unanswered(self, rows: list[Row]) -> list[Row]:
        """Rows whose requests are not answered yet: those answered early (take) are left alone."""
        answered = {id(r) for item in self._active if item.done.is_set() for r in item.rows}
        return [r for r in rows if id(r) not in answered]

    def _after_out_of_memory(self, batch: list[Row], message: str = "") -> None:
        # The budget is enforced by the allocator, so a batch that does not fit is split, and the
        # limits shrink so later batches do not hit the wall again.
        self.generator.release_memory()
        torch.cuda.empty_cache()
        self.stats.add("out_of_memory_splits")
        for row in batch:
            row.reset()
        if len(batch) == 1:
            batch[0].error = self.out_of_memory_message
            batch[0].finished, batch[0].finish_reason = True, "out_of_memory"
            return
        if self.generator.packing and not batch[0].echo and not batch[0].needs_decode:  # a packed batch
            self.limits.max_packed_tokens = max(256, self.limits.max_packed_tokens // 2)
            self.limits.max_packed_rows = max(1, min(self.limits.max_packed_rows, len(batch) // 2))
        cost = _cost(batch)
        self.limits.max_batch_tokens = max(256, min(self.limits.max_batch_tokens, cost // 2))
        self.limits.max_echo_tokens = max(256, self.limits.max_echo_tokens // 2)
        self.limits.max_batch_size = max(1, min(self.limits.max_batch_size, len(batch) // 2))
        log.warning("out of memory on %d rows (%s); limits now %s", len(batch), message, self.limits)
        half = len(batch) // 2
        self._run_batch(batch[:half])
        self._run_batch(batch[half:])


# Model FLOPs a single-token batch holds before it starts when ENGINE_FILL_TOKENS=auto: ~30 ms of an
# H200's matrix rate at the ~70 % a packed forward reaches, about the host's time for one batch.
FILL_FLOPS = FORWARD_FLOPS


def fill_tokens(params: int, setting: str | None = None) -> int:
    """Limits.fill_tokens on a GPU from ENGINE_FILL_TOKENS: unset or 0, no waiting (the default); a
    number of tokens; `auto`, FILL_FLOPS' worth for a model of `params` parameters. Off by default:
    the wait adds to every request's latency, which the efficiency score counts, and only for small
    models (a 6.7 B model's batches already reach the target), so it would move small models' scores
    against large ones' (docs/benchmarks.md, session 10)."""
    setting = (os.environ.get("ENGINE_FILL_TOKENS", "0") if setting is None else setting).strip().lower()
    if setting == "auto":
        return forward_worth_tokens(params)
    try:
        return max(0, int(setting))
    except ValueError:
        log.warning("ENGINE_FILL_TOKENS=%r is neither a number nor 'auto': no waiting", setting)
        return 0


def decode_fill_seconds(setting: str | None = None) -> float:
    """Limits.decode_fill_seconds on a GPU from ENGINE_DECODE_FILL_SECONDS (unset: 0.05; 0: no
    waiting). HELM's threads send a run's requests within ~25 ms; the wait ends 10 ms after the last
    (fill_gap_seconds), a little latency on a decoding request's hundreds of milliseconds, where a join
    costs every running row 52-86 ms (1.1 B: docs/benchmarks.md, session 17)."""
    setting = os.environ.get("ENGINE_DECODE_FILL_SECONDS", "0.05") if setting is None else setting
    try:
        return max(0.0, float(setting))
    except ValueError:
        log.warning("ENGINE_DECODE_FILL_SECONDS=%r is not a number: no waiting", setting)
        return 0.0


def default_limits(model: Any, device: str, budget_bytes: int | None) -> Limits:
    """Batch limits from the memory left next to the weights (GPU) or modest fixed ones (CPU)."""
    if not device.startswith("cuda"):
        return Limits(max_batch_size=32, max_batch_tokens=16384, max_echo_tokens=8192)
    cfg = model.config
    elem = next(model.parameters()).element_size()
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 4096)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 32)
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 32)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    intermediate = getattr(cfg, "intermediate_size", None) or 4 * hidden
    vocab = getattr(cfg, "vocab_size", 32000)
    index = torch.device(device).index or 0
    # Under a budget the allocator is capped below it (the CUDA context takes the rest): size batches
    # for the cap, or every large batch runs out of memory and is split (seen on an H200 at 6 GB).
    limit = allocator_cap_bytes(budget_bytes) if budget_bytes else torch.cuda.get_device_properties(index).total_memory
    free = max(limit - torch.cuda.memory_allocated(index), 256 * 1024**2)
    kv_per_token = 2 * layers * kv_heads * head_dim * elem
    # Room for the few-shot prefixes of about four runs at once (~600 tokens each), at most a fifth
    # of what is free: several helm-run processes interleave their runs' requests, and a store too
    # small for all their prefixes would drop each one just before it is needed again.
    store = min(free // 5, 4 * 600 * kv_per_token)
    # Transient activations of one layer per token (residual, attention, MLP) with some slack.
    act_per_token = (6 * hidden + 3 * intermediate) * elem
    tokens = int(0.6 * free / (kv_per_token + act_per_token))
    store_tokens = int(0.6 * store / (kv_per_token + act_per_token))
    echo_tokens = int(0.2 * (free - store) / (vocab * (elem + 4)))  # echo batches leave the store in place
    # A packed token keeps no cache; its attention adds fp32 merges and its row's padded copies.
    packed_tokens = int(0.6 * (free - store) / (act_per_token + 24 * hidden))
    params = sum(p.numel() for p in model.parameters())
    return Limits(
        fill_tokens=fill_tokens(params),
        decode_fill_seconds=decode_fill_seconds(),
        merge_padding_tokens=forward_worth_tokens(params),
        max_batch_size=256,
        max_batch_tokens=max(1024, min(tokens, 1 << 20)),
        max_echo_tokens=max(512, min(echo_tokens, 1 << 18)),
        prefix_store_bytes=store,
        prefix_store_tokens=store_tokens,
        max_packed_tokens=max(1024, min(packed_tokens, 1 << 16)),
    )
