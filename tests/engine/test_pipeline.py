"""Pipelined single-token batches (ENGINE_PIPELINE): a packed batch of greedy rows is left running on
the GPU (`generate(defer=True)`) and read once the next batch is launched behind it. On the CPU the
launch runs the forward whole, so these tests check the order of launches and reads, the results
and the busy time, not any overlap."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from benchmarks.helm_speed import efficiency, timeline_summary
from evaluation.engine.server.batching import Limits, Scheduler, Work
from evaluation.engine.server.generation import BatchGenerator, LaunchedBatch, Row
from evaluation.engine.server.pipeline import Inflight, Pace, pipelining
from evaluation.engine.server.stats import Stats
from tests.engine.reference import STORE_BYTES, assert_like_generate, rows_for, serve
from tests.engine.test_prefix_batches import run_prompts


@pytest.fixture(params=["plain", "graph shapes"])
def packing(request, monkeypatch):
    """The plain packed forward, and the packed graphs' fixed shapes (without graphs on the CPU)."""
    monkeypatch.setenv("ENGINE_PACKED_GRAPHS", "1" if request.param == "graph shapes" else "0")


def _single(tokenizer, run: int, count: int, start: int = 0, **kwargs):
    return rows_for(tokenizer, run_prompts(run, count, start), max_new_tokens=1, **kwargs)


def test_pipelining_is_on_for_a_gpu_unless_turned_off(monkeypatch):
    monkeypatch.delenv("ENGINE_PIPELINE", raising=False)
    assert pipelining("cuda:0") and not pipelining("cpu")
    assert pipelining("cpu", "1") and not pipelining("cuda:0", "0") and not pipelining("cuda", "off")
    monkeypatch.setenv("ENGINE_PIPELINE", "0")
    assert not pipelining("cuda:0")


def test_a_launched_batch_is_filled_in_when_read_as_generate_fills_it(llama, packing):
    tokenizer = llama.tokenizer
    generator = BatchGenerator(llama.model, llama.tokenizer, prefix_store_bytes=STORE_BYTES)
    rows = _single(tokenizer, 0, 5)  # one run's rows: they share its prefix (the graphs' chunks need one)
    generator.generate(rows, defer=True)
    assert (generator.graphs.served if generator.graphs else 1) == 1
    launched = generator.last_launched
    assert isinstance(launched, LaunchedBatch) and launched.ready()
    assert generator.last_packed and not any(r.finished or r.tokens for r in rows)
    launched.finish()
    assert all(r.finished for r in rows)
    assert_like_generate(llama.model, tokenizer, rows)
    same = _single(tokenizer, 0, 5)
    generator.generate(same)
    assert generator.last_launched is None
    for a, b in zip(rows, same, strict=True):  # not close: the same numbers
        assert (a.tokens, a.logprobs, a.finish_reason) == (b.tokens, b.logprobs, b.finish_reason)


def test_sampled_and_decoding_rows_are_never_left_running(llama):
    tokenizer = llama.tokenizer
    generator = BatchGenerator(llama.model, llama.tokenizer, prefix_store_bytes=STORE_BYTES)
    sampled = _single(tokenizer, 0, 2, temperature=0.9)
    for row in sampled:
        row.generator = torch.Generator().manual_seed(3)
    generator.generate(sampled, defer=True)
    assert generator.last_launched is None and all(r.finished for r in sampled)
    decoding = rows_for(tokenizer, run_prompts(0, 2), max_new_tokens=3)
    generator.generate(decoding, defer=True)
    assert generator.last_launched is None and all(r.finished for r in decoding)


class _Log:
    """Records each batch's launch (or whole run) and each read, in order, with its rows."""

    def __init__(self, generator: BatchGenerator, monkeypatch):
        self.events: list[tuple[str, int]] = []
        generate, finish = generator.generate, LaunchedBatch.finish

        def logged_generate(rows, joining=None, *, defer=False):
            out = generate(rows, joining, defer=defer)
            self.events.append(("launch" if generator.last_launched else "run", len(rows)))
            return out

        def logged_finish(launched):
            self.events.append(("read", len(launched.rows)))
            finish(launched)

        monkeypatch.setattr(generator, "generate", logged_generate)
        monkeypatch.setattr(LaunchedBatch, "finish", logged_finish)


def test_each_batch_is_read_after_the_next_one_is_launched(llama, packing, monkeypatch):
    monkeypatch.setenv("ENGINE_TIMELINE", "1")
    tokenizer = llama.tokenizer
    stats = Stats()
    generator = BatchGenerator(llama.model, llama.tokenizer, prefix_store_bytes=STORE_BYTES)
    log = _Log(generator, monkeypatch)
    # One gather of six rows (the limit cuts it in two batches), then a decoding request.
    scheduler = Scheduler(generator, stats, Limits(max_packed_rows=3), pipelined=True)
    works = [Work(_single(tokenizer, 0, 3)), Work(_single(tokenizer, 0, 3, start=3))]
    decoding = Work(rows_for(tokenizer, run_prompts(1, 1), max_new_tokens=3))
    for work in works:
        scheduler._arrived(work.rows)
        scheduler._queue.put(work)
    timed: list[tuple[int, float]] = []
    monkeypatch.setattr(LaunchedBatch, "gpu_seconds", lambda launched: 0.012)  # as a GPU's events would say
    monkeypatch.setattr(scheduler.pace, "timed", lambda tokens, seconds: timed.append((tokens, seconds)))
    started = time.perf_counter()
    serve(scheduler, [decoding], [0.3])
    wall = time.perf_counter() - started
    # A decoding batch is never left running, and the packed batch before it is read before it runs.
    assert log.events == [("launch", 3), ("launch", 3), ("read", 3), ("read", 3), ("run", 1)]
    assert all(w.done.is_set() for w in works)
    # The pace learns from the second batch only: the first prefilled its prefix (a first-time cost).
    (tokens, seconds), prompts = timed[0], [r.prompt_ids for w in works for r in w.rows]
    assert len(timed) == 1 and seconds == 0.012 and 0 < tokens < sum(map(len, prompts)) // 2  # its own tokens
    assert_like_generate(llama.model, tokenizer, [r for w in [*works, decoding] for r in w.rows])
    snapshot = stats.snapshot()
    assert snapshot["batches"] == 3 and snapshot["mean_batch_rows"] == 7 / 3
    # Busy time counts the overlapping batches' shared time once.
    assert 0 < snapshot["packed_seconds"] <= snapshot["busy_seconds"] <= wall
    assert snapshot["packed_gpu_batches"] == 2 and snapshot["packed_gpu_seconds"] == pytest.approx(0.024)
    summary = timeline_summary(snapshot["timeline"])
    assert summary["batch_count"] == 3 and 0 < summary["busy_share"] <= 1


def test_a_gathers_requests_are_answered_when_its_last_batch_is_read(llama, monkeypatch):
    tokenizer = llama.tokenizer
    generator = BatchGenerator(llama.model, llama.tokenizer, prefix_store_bytes=STORE_BYTES)
    scheduler = Scheduler(generator, Stats(), Limits(), pipelined=True)
    answered: list[int] = []
    finish = LaunchedBatch.finish

    def slow_finish(launched):
        assert not answered  # nothing is answered before its rows are read
        finish(launched)

    monkeypatch.setattr(LaunchedBatch, "finish", slow_finish)
    scheduler.start()
    try:
        rows = _single(tokenizer, 0, 4)
        done = []
        scheduler.submit_async(rows, lambda: (answered.append(1), done.append(all(r.finished for r in rows))))
        deadline = time.monotonic() + 60
        while not answered and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        scheduler.stop()
    # With no more work arriving, the batch is read as soon as it is done.
    assert answered == [1] and done == [True]
    assert_like_generate(llama.model, tokenizer, rows)


def test_a_batch_that_cannot_be_read_fails_its_own_requests_only(llama, monkeypatch):
    tokenizer = llama.tokenizer
    generator = BatchGenerator(llama.model, llama.tokenizer, prefix_store_bytes=STORE_BYTES)
    scheduler = Scheduler(generator, Stats(), Limits(), pipelined=True)
    finish, calls = LaunchedBatch.finish, []

    def failing_once(launched):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        finish(launched)

    monkeypatch.setattr(LaunchedBatch, "finish", failing_once)
    first, second = Work(_single(tokenizer, 0, 2)), Work(_single(tokenizer, 1, 2))
    serve(scheduler, [first, second], [0.0, 0.3])
    assert all(r.finish_reason == "error" and "illegal memory access" in r.error for r in first.rows)
    assert all(r.error is None for r in second.rows)
    assert_like_generate(llama.model, tokenizer, second.rows)


def test_the_timelines_busy_share_counts_overlapping_batches_once():
    events = [{"kind": "arrive", "t": 10.0, "rows": 4, "tokens": 40, "work": "single"}]
    for i in range(4):  # each batch 10 ms, the next launched 6 ms after it began
        began = 10.0 + 0.006 * i
        events.append({"kind": "batch", "t": began + 0.010, "began": began, "rows": 1, "joined": 0,
                       "work": "single", "decode_steps": 0, "decode": {}})  # fmt: skip
    summary = timeline_summary(events)
    assert summary["busy_share"] == 1.0 and summary["median_gap_ms"] == -4.0


def _inflight(ready: bool, done_by: float | None = None) -> Inflight:
    class Running:
        def ready(self) -> bool:
            return ready

    return Inflight(Running(), [], 0.0, 0.0, 0.0, {}, tokens=0, done_by=done_by)


def test_the_pace_says_when_the_gpu_is_done_and_when_to_launch_behind_it():
    pace = Pace()
    assert pace.launched(started=10.0, tokens=1000, launch_seconds=0.004) is None  # nothing timed yet
    assert pace.gather_until(_inflight(False, None)) is None  # then: until the batch is done
    pace.timed(1000, None)
    pace.timed(0, 0.5)
    assert pace.gpu_per_token is None  # no timing (a CPU) or no tokens: nothing learnt
    pace.timed(1000, 0.020)
    assert pace.gpu_per_token == pytest.approx(2e-5)
    first = pace.launched(started=11.0, tokens=1000, launch_seconds=0.004)
    assert first == pytest.approx(11.004 + 0.020)  # launched 4 ms after its start, then 20 ms of work
    # Launched while the first runs, the second starts on the GPU when the first is done.
    second = pace.launched(started=11.010, tokens=500, launch_seconds=0.008)
    assert second == pytest.approx(first + 0.010)
    assert pace.launch == pytest.approx(0.75 * 0.004 + 0.25 * 0.008)
    assert pace.gather_until(_inflight(False, second)) == pytest.approx(second - pace.launch)


def test_the_pace_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("ENGINE_PACE", "0")
    pace = Pace()
    pace.timed(1000, 0.020)
    done_by = pace.launched(started=11.0, tokens=1000, launch_seconds=0.004)
    assert done_by is not None and pace.gather_until(_inflight(False, done_by)) is None  # until it is done
    monkeypatch.delenv("ENGINE_PACE")
    assert Pace().enabled


@pytest.mark.parametrize("paced", [False, True])
def test_a_gather_beside_a_running_batch_ends_in_time_to_launch_behind_it(llama, paced):
    scheduler = Scheduler(BatchGenerator(llama.model, llama.tokenizer), Stats(), Limits(),
                          max_wait_seconds=30.0, gather_seconds=0.5, pipelined=True)  # fmt: skip
    scheduler.pace.launch = 0.010
    done_by = time.perf_counter() + 0.06 if paced else None  # the GPU done in 60 ms: gather for 50 ms
    scheduler._inflight = _inflight(False, done_by)
    (row,) = _single(llama.tokenizer, 0, 1)
    sent = threading.Event()

    def send() -> None:  # 300 requests, one a millisecond
        for _ in range(300):
            scheduler._queue.put(Work([Row(prompt_ids=row.prompt_ids, max_new_tokens=1)]))
            time.sleep(0.001)
        sent.set()

    sender = threading.Thread(target=send)
    sender.start()
    try:
        items, stopping = scheduler._gather(scheduler._queue.get())
        still_sending = not sent.is_set()
    finally:
        sender.join()
    assert not stopping
    if paced:  # ended by the pace, with requests still coming
        assert still_sending and 1 < len(items) < 300
    else:  # until the batch is done or a pause (here, the sender's end)
        assert not still_sending and len(items) == 300


@pytest.mark.parametrize("done", [True, False])
def test_a_gather_beside_a_running_batch_takes_what_has_arrived_however_late_it_is(llama, done):
    """Past the pace's time (or the batch before done as the gather begins), nothing more is waited
    for, but the requests already queued all go into the batch."""
    scheduler = Scheduler(BatchGenerator(llama.model, llama.tokenizer), Stats(), Limits(), pipelined=True)
    scheduler.pace.launch = 0.010
    (row,) = _single(llama.tokenizer, 0, 1)
    queued = [Work([Row(prompt_ids=row.prompt_ids, max_new_tokens=1)]) for _ in range(10)]
    for work in queued:
        scheduler._queue.put(work)
    scheduler._inflight = _inflight(done, time.perf_counter() - 1.0)  # the GPU should have been done
    settled = []

    def settle() -> None:  # the batch before, read (nothing to read in this stand-in)
        settled.append(1)
        scheduler._inflight = None

    scheduler._settle = settle
    items, stopping = scheduler._gather(scheduler._queue.get())
    assert not stopping and items == queued and settled == ([1] if done else [])
    scheduler._queue.put(None)  # a stop signal among them is kept
    assert scheduler._take_queued([]) is True


def test_the_benchmark_gives_the_rate_over_the_gpus_time_when_every_batch_was_timed():
    ceilings = {"bf16_matmul_tflops": 1000.0}
    counts = {"prompt_tokens": 1_100_000, "output_tokens": 3000}
    stats = {"busy_seconds": 2.0, "shared_prefix_tokens": 100_000, "batches": 50, "packed_gpu_batches": 50,
             "packed_gpu_seconds": 1.6}  # fmt: skip
    row = {"wall_s": 6.0, "helm_s": 5.0, "server_stats": stats}
    eff = efficiency(row, counts, ceilings, 10**9, 2 * 10**9, 0, "prefill")
    assert eff["mfu"] == pytest.approx(2e9 * 1e6 / 2.0 / 1e15)  # over the busy time: the target's figure
    assert eff["mfu_gpu_time"] == pytest.approx(2e9 * 1e6 / 1.6 / 1e15) and eff["gpu_s"] == 1.6
    stats["packed_gpu_batches"] = 49  # a batch not timed: no such figure
    assert "mfu_gpu_time" not in efficiency(row, counts, ceilings, 10**9, 2 * 10**9, 0, "prefill")


def test_a_packed_launch_is_timed_step_by_step(llama, monkeypatch):
    monkeypatch.setenv("ENGINE_PACKED_GRAPHS", "1")
    generator = BatchGenerator(llama.model, llama.tokenizer, prefix_store_bytes=STORE_BYTES)
    generator.generate(_single(llama.tokenizer, 0, 6))
    assert generator.graphs.served == 1
    steps = generator.last_launch_steps
    names = [name for name, _ in steps]
    assert names[0] == "prefixes" and names[-1] == "order" and all(ms >= 0 for _, ms in steps)
    chunks = names[1:-1]
    assert chunks and all(
        a.startswith("fill ") and b == "replay" for a, b in zip(chunks[::2], chunks[1::2], strict=True)
    )
    assert sum(ms for _, ms in steps) <= 1000 * generator.last_launch_seconds


def test_the_timeline_summary_shows_where_slow_launches_waited():
    events = [{"kind": "arrive", "t": 10.0, "rows": 3, "tokens": 30, "work": "single"}]
    for i, launch in enumerate([0.004, 0.050, 0.030]):
        steps = [["prefixes", 0.1], ["fill 2048", 0.5], ["replay", 1000 * launch - 2.6]]  # 2 ms grouping first
        packed = {"launch": launch, "prefix_fills": 1 if i == 2 else 0, "prefix_fill": 0.02 if i == 2 else 0.0,
                  "captures": 0, "steps": steps}  # fmt: skip
        events.append({"kind": "batch", "t": 10.1 * (i + 1), "began": 10.1 * (i + 1) - 0.06, "rows": 5,
                       "joined": 0, "work": "single", "decode_steps": 0, "decode": {}, "packed": packed})  # fmt: skip
    summary = timeline_summary(events)
    # The second batch's launch waited in its replay; the third prefilled a prefix (a known cost).
    (slow,) = summary["slow_launches"]
    assert slow == {"rows": 5, "launch": 50.0, "steps": events[2]["packed"]["steps"], "grouping": 2.0}
    assert all("steps" not in b for b in summary["batches"])
