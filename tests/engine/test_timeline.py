"""The server's timeline (ENGINE_TIMELINE=1: when requests arrived, when each batch ran, a decoding
batch's prefill, start and joins) and decoding batches that wait for the decoding rows still arriving
(Limits.decode_fill_seconds)."""

from __future__ import annotations

import time

import pytest

from benchmarks.helm_speed import timeline_summary
from evaluation.engine.server.batching import Limits, Scheduler, Work, decode_fill_seconds
from evaluation.engine.server.generation import BatchGenerator
from evaluation.engine.server.stats import Stats
from tests.engine.reference import PROMPTS, STORE_BYTES, assert_like_generate, rows_for, serve
from tests.engine.test_prefix_batches import run_prompts


def _decoding(tokenizer, prompts: list[str], new: int = 6) -> list[Work]:
    return [Work(rows_for(tokenizer, [p], max_new_tokens=new)) for p in prompts]


def _scheduler(llama, limits: Limits, **kwargs) -> tuple[Scheduler, Stats]:
    stats = Stats()
    generator = BatchGenerator(llama.model, llama.tokenizer, decode="static")
    return Scheduler(generator, stats, limits, **kwargs), stats


def test_the_timeline_is_off_unless_asked(llama, monkeypatch):
    monkeypatch.delenv("ENGINE_TIMELINE", raising=False)
    scheduler, stats = _scheduler(llama, Limits())
    serve(scheduler, _decoding(llama.tokenizer, PROMPTS[:1]), [0.0])
    assert stats.timeline is None and "timeline" not in stats.snapshot()


def test_the_timeline_lists_arrivals_batches_and_joins(llama, monkeypatch):
    monkeypatch.setenv("ENGINE_TIMELINE", "1")
    scheduler, stats = _scheduler(llama, Limits())
    # The first request decodes 40 tokens; the second arrives while it runs and joins it.
    first = Work(rows_for(llama.tokenizer, PROMPTS[:1], max_new_tokens=40))
    later = Work(rows_for(llama.tokenizer, PROMPTS[1:2], max_new_tokens=4))
    # The model thread sleeps at every join's check until the second request has arrived.
    take = scheduler.take

    def slow_take(generator, slots):
        time.sleep(0.01)
        return take(generator, slots)

    scheduler.take = slow_take
    serve(scheduler, [first, later], [0.0, 0.05])
    timeline = stats.snapshot()["timeline"]
    arrivals = [e for e in timeline if e["kind"] == "arrive"]
    assert [(e["rows"], e["work"]) for e in arrivals] == [(1, "decode"), (1, "decode")]
    assert arrivals[0]["tokens"] == len(first.rows[0].prompt_ids)
    (batch,) = [e for e in timeline if e["kind"] == "batch"]
    assert batch["rows"] == 1 and batch["joined"] == 1 and batch["work"] == "decode"
    decode = batch["decode"]
    assert decode["join_count"] == 1 and len(decode["joined"]) == 1
    at, rows, took, captures = decode["joined"][0]
    assert rows == 1 and at > 0 and took > 0 and captures == 0  # no graphs on the CPU
    assert 0 < decode["prefill_launch"] <= decode["prefill"]
    assert batch["began"] >= arrivals[0]["t"] and batch["t"] >= batch["began"]
    assert_like_generate(llama.model, llama.tokenizer, first.rows + later.rows)

    summary = timeline_summary(timeline)
    assert summary["rows"] == 2 and summary["arrival_ms_by_tenth"][0] == 0.0
    assert 40 <= summary["arrival_ms_by_tenth"][-1] < 5000
    (entry,) = summary["batches"]
    assert entry["joined"] == 1 and entry["work"] == "decode" and entry["each_join"][0][1] == 1
    assert entry["ms"] > 0 and entry["prefill"] >= entry["prefill_launch"]
    assert summary["batch_count"] == 1 and summary["median_rows"] == 1 and summary["median_gap_ms"] is None
    assert 0 < summary["busy_share"] <= 1


def test_packed_batches_record_how_long_the_host_took_to_launch_them(llama, monkeypatch):
    monkeypatch.setenv("ENGINE_TIMELINE", "1")
    stats = Stats()
    generator = BatchGenerator(llama.model, llama.tokenizer, prefix_store_bytes=STORE_BYTES)
    assert generator.packing
    scheduler = Scheduler(generator, stats, Limits(fill_tokens=0))
    works = [Work(rows_for(llama.tokenizer, run_prompts(0, 4), max_new_tokens=1))]
    works.append(Work(rows_for(llama.tokenizer, run_prompts(0, 3, 10), max_new_tokens=1)))
    serve(scheduler, works, [0.0, 0.3])
    snapshot = stats.snapshot()
    batches = [e for e in snapshot["timeline"] if e["kind"] == "batch"]
    assert len(batches) == 2 and all(e["work"] == "single" for e in batches)
    for e in batches:
        assert 0 <= e["packed"]["prefix_fill"] < e["packed"]["launch"] <= e["t"] - e["began"]
    # The first batch prefilled and stored its prefix; the second found it stored. No graphs on the CPU.
    assert [e["packed"]["prefix_fills"] for e in batches] == [1, 0] and batches[1]["packed"]["prefix_fill"] == 0
    assert all(e["packed"]["captures"] == 0 for e in batches)
    assert 0 < snapshot["packed_launch_seconds"] < snapshot["packed_seconds"] <= snapshot["busy_seconds"]
    assert snapshot["packed_launch_seconds"] == pytest.approx(sum(e["packed"]["launch"] for e in batches), abs=1e-5)
    summary = timeline_summary(snapshot["timeline"])
    assert summary["median_launch_ms"] == max(entry["launch"] for entry in summary["batches"])
    first = summary["batches"][0]
    assert first["prefix_fills"][0] == 1 and summary["prefix_fills_ms"] == [1, first["prefix_fills"][1]]
    assert summary["packed_captures"] == 0
    assert_like_generate(llama.model, llama.tokenizer, works[0].rows + works[1].rows)

    # A decoding batch is not packed: no launch time.
    stats = Stats()
    scheduler = Scheduler(BatchGenerator(llama.model, llama.tokenizer), stats, Limits())
    serve(scheduler, _decoding(llama.tokenizer, PROMPTS[:1]), [0.0])
    (batch,) = [e for e in stats.snapshot()["timeline"] if e["kind"] == "batch"]
    assert batch["packed"] is None and stats.snapshot()["packed_seconds"] == 0


def test_the_timeline_summary_counts_every_batch_and_shows_the_first():
    events = [{"kind": "arrive", "t": 10.0, "rows": 3, "tokens": 30, "work": "single"}]
    for i in range(20):  # batches of i % 5 + 1 rows, 4 ms each, 1 ms apart
        began = 10.001 + 0.005 * i
        events.append({"kind": "batch", "t": began + 0.004, "began": began, "rows": i % 5 + 1, "joined": 0,
                       "work": "single", "decode_steps": 0, "decode": {}})  # fmt: skip
    summary = timeline_summary(events)
    assert summary["batch_count"] == 20 and len(summary["batches"]) == 12
    assert summary["median_rows"] == 3 and summary["median_ms"] == pytest.approx(4.0, abs=0.2)
    assert summary["median_gap_ms"] == pytest.approx(1.0, abs=0.2)
    assert summary["busy_share"] == pytest.approx(80 / 101, abs=0.01)


def test_a_decoding_batch_waits_for_the_decoding_rows_still_arriving(llama):
    works = _decoding(llama.tokenizer, PROMPTS[:4])
    scheduler, stats = _scheduler(llama, Limits(decode_fill_seconds=5.0), fill_gap_seconds=1.0)
    serve(scheduler, works, [0.0, 0.05, 0.05, 0.05])
    assert stats.batches == 1 and stats.batch_rows == 4 and stats.joined_rows == 0
    assert stats.filled_batches == 1 and stats.fill_wait_seconds > 0
    assert_like_generate(llama.model, llama.tokenizer, [r for w in works for r in w.rows])


def test_without_the_wait_later_decoding_rows_join_or_run_after(llama):
    works = _decoding(llama.tokenizer, PROMPTS[:3])
    scheduler, stats = _scheduler(llama, Limits(), fill_gap_seconds=1.0)
    serve(scheduler, works, [0.0, 0.3, 0.3])
    assert stats.filled_batches == 0 and (stats.batches > 1 or stats.joined_rows > 0)


def test_the_decoding_wait_ends_at_a_pause_and_at_other_work(llama):
    scheduler, stats = _scheduler(llama, Limits(decode_fill_seconds=60.0), fill_gap_seconds=0.1)
    started = time.monotonic()
    serve(scheduler, _decoding(llama.tokenizer, PROMPTS[:1]), [0.0])
    assert time.monotonic() - started < 30  # a 0.1 s pause ended it, not the 60 s limit
    assert stats.filled_batches == 1

    scheduler, stats = _scheduler(llama, Limits(decode_fill_seconds=60.0), fill_gap_seconds=30.0)
    scoring = Work(rows_for(llama.tokenizer, PROMPTS[1:2], max_new_tokens=1))
    started = time.monotonic()
    serve(scheduler, [*_decoding(llama.tokenizer, PROMPTS[:1]), scoring], [0.0, 0.1])
    assert time.monotonic() - started < 30  # single-token work ended it
    assert stats.filled_batches == 1


def test_the_decoding_wait_setting(monkeypatch):
    monkeypatch.delenv("ENGINE_DECODE_FILL_SECONDS", raising=False)
    assert decode_fill_seconds() == pytest.approx(0.05)
    assert decode_fill_seconds("0") == 0.0
    assert decode_fill_seconds("0.03") == pytest.approx(0.03)
    assert decode_fill_seconds("-1") == 0.0
    assert decode_fill_seconds("soon") == 0.0
