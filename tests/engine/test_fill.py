"""Single-token batches that wait for more rows (Limits.fill_tokens, Scheduler._fill): requests
arriving a little later join the batch instead of running in one of their own; the wait ends at a
pause in arrivals, at the time limit, or when work of another kind arrives; every row still gets
the logprobs `generate` gives."""

from __future__ import annotations

import threading
import time

import pytest

from evaluation.engine.server.batching import Limits, Scheduler, Work
from evaluation.engine.server.generation import BatchGenerator
from evaluation.engine.server.stats import Stats
from tests.engine.reference import FEW_SHOT_PROMPTS, PROMPTS, assert_like_generate, rows_for, serve


def _scheduler(llama, fill_tokens: int, **kwargs) -> tuple[Scheduler, Stats]:
    stats = Stats()
    generator = BatchGenerator(llama.model, llama.tokenizer)
    assert generator.packing
    return Scheduler(generator, stats, Limits(fill_tokens=fill_tokens), **kwargs), stats


def _scoring(tokenizer, prompts: list[str]) -> list[Work]:
    return [Work(rows_for(tokenizer, [prompt], max_new_tokens=1)) for prompt in prompts]


def test_single_token_requests_arriving_later_wait_in_one_batch(llama):
    works = _scoring(llama.tokenizer, FEW_SHOT_PROMPTS)
    scheduler, stats = _scheduler(llama, fill_tokens=10**6, fill_seconds=5.0, fill_gap_seconds=1.0)
    serve(scheduler, works, [0.0] + [0.05] * (len(works) - 1))
    assert stats.batches == 1 and stats.batch_rows == len(works)
    assert stats.filled_batches == 1 and stats.fill_wait_seconds > 0
    assert_like_generate(llama.model, llama.tokenizer, [r for w in works for r in w.rows])


def test_without_a_fill_target_later_requests_run_in_batches_of_their_own(llama):
    works = _scoring(llama.tokenizer, FEW_SHOT_PROMPTS)
    scheduler, stats = _scheduler(llama, fill_tokens=0, fill_seconds=5.0, fill_gap_seconds=1.0)
    serve(scheduler, works, [0.0] + [0.3] * (len(works) - 1))
    # Each request finds the model idle, or at most the ones sent during a batch run together.
    assert stats.batches > 1 and stats.filled_batches == 0


def test_the_wait_ends_when_requests_stop_arriving(llama):
    works = _scoring(llama.tokenizer, PROMPTS[:1])
    scheduler, stats = _scheduler(llama, fill_tokens=10**6, fill_seconds=60.0, fill_gap_seconds=0.1)
    started = time.monotonic()
    serve(scheduler, works, [0.0])
    # Far short of the 60 s limit: a pause of 0.1 s ended the wait.
    assert time.monotonic() - started < 30
    assert stats.filled_batches == 1 and stats.fill_wait_seconds < 30


def test_the_wait_ends_at_the_fill_target(llama):
    # The first request's tokens are half the target: the second, sent a little later, fills the
    # batch, which starts at once; the third, sent well after, runs on its own.
    works = _scoring(llama.tokenizer, PROMPTS[:3])
    target = 2 * len(works[0].rows[0].prompt_ids)
    scheduler, stats = _scheduler(llama, fill_tokens=target, fill_seconds=60.0, fill_gap_seconds=30.0)
    serve(scheduler, works, [0.0, 0.1, 1.0])
    assert stats.batches == 2 and stats.max_batch_rows == 2 and stats.filled_batches == 1


def test_decoding_work_ends_the_wait_and_runs_at_once(llama):
    scoring = _scoring(llama.tokenizer, PROMPTS[:2])
    decoding = Work(rows_for(llama.tokenizer, PROMPTS[2:4], max_new_tokens=4))
    scheduler, stats = _scheduler(llama, fill_tokens=10**6, fill_seconds=60.0, fill_gap_seconds=30.0)
    done_at: dict[str, float] = {}
    decoding.on_done = lambda: done_at.setdefault("decoding", time.monotonic())
    started = time.monotonic()
    serve(scheduler, [*scoring, decoding], [0.0, 0.0, 0.2])
    assert done_at["decoding"] - started < 30  # not the 30 s pause nor the 60 s limit
    assert stats.filled_batches == 1
    rows = [r for w in [*scoring, decoding] for r in w.rows]
    assert_like_generate(llama.model, llama.tokenizer, rows)


def test_the_fill_target_counts_the_tokens_a_row_computes_after_a_shared_prefix(llama):
    # After a batch of rows sharing a long few-shot prefix, a row costs only its own tokens: the
    # next wait asks for as many rows as those tokens fill, not as many as whole prompts would.
    scheduler, _ = _scheduler(llama, fill_tokens=1)
    rows = rows_for(llama.tokenizer, FEW_SHOT_PROMPTS, max_new_tokens=1)
    scheduler.run(rows)
    prompts = sum(len(r.prompt_ids) for r in rows)
    skipped = scheduler.generator.last_skipped_tokens
    assert skipped > 0
    assert scheduler._tokens_per_row == pytest.approx((prompts - skipped) / len(rows))


def test_a_stop_during_the_wait_still_answers_what_was_gathered(llama):
    works = _scoring(llama.tokenizer, PROMPTS[:1])
    scheduler, stats = _scheduler(llama, fill_tokens=10**6, fill_seconds=60.0, fill_gap_seconds=30.0)
    scheduler.start()
    scheduler._queue.put(works[0])
    time.sleep(0.2)
    stopper = threading.Thread(target=scheduler.stop)
    stopper.start()
    assert works[0].done.wait(timeout=120)
    stopper.join(timeout=30)
    assert works[0].rows[0].finished and not works[0].rows[0].error


def test_the_fill_target_from_the_environment():
    from evaluation.engine.server.batching import FILL_FLOPS, fill_tokens

    assert fill_tokens(1_100_000_000, "0") == 0
    assert fill_tokens(1_100_000_000, "5000") == 5000
    assert fill_tokens(1_100_000_000, "auto") == FILL_FLOPS // (2 * 1_100_000_000)
    assert fill_tokens(6_700_000_000, "AUTO") < fill_tokens(1_100_000_000, "auto")
    assert fill_tokens(1_100_000_000, "-3") == 0
    assert fill_tokens(1_100_000_000, "lots") == 0  # a warning, no waiting, no crash


def test_no_waiting_unless_asked(monkeypatch):
    from evaluation.engine.server.batching import fill_tokens

    monkeypatch.delenv("ENGINE_FILL_TOKENS", raising=False)
    assert fill_tokens(1_100_000_000) == 0
    monkeypatch.setenv("ENGINE_FILL_TOKENS", "auto")
    assert fill_tokens(1_100_000_000) > 0
