"""Continuous batching: rows that arrive while a static-cache decode batch runs join it at the next
step, and each still gets `generate`'s tokens (fp32, logprobs within 1e-4), whichever rows it shares
the batch with, wherever it lands in the buffers."""

from __future__ import annotations

import pytest
import torch

from evaluation.engine.server.batching import Limits, Scheduler, Work
from evaluation.engine.server.generation import BatchGenerator, Row, common_prefix_length
from evaluation.engine.server.stats import Stats
from tests.engine.reference import FEW_SHOT_PROMPTS, PROMPTS, assert_like_generate, forward_tokens, rows_for


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    from evaluation.engine.loading import load_model
    from evaluation.engine.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-gqa-join"), "llama", seed=2, num_heads=8, num_kv_heads=2)
    return load_model(folder, device="cpu", dtype="float32")


def _ids(rows: list[Row]) -> set[int]:
    return {id(r) for r in rows}  # joined rows come in prefix-group order


class Arrivals:
    """A `Joining` that hands over rows at given steps (0: before the first step)."""

    def __init__(self, schedule: dict[int, list[Row]]):
        self.schedule, self.step, self.declined = dict(schedule), 0, []

    def take(self, generator, slots):
        rows = self.schedule.pop(self.step, [])
        self.step += 1
        return rows

    def decline(self, rows):
        self.declined += rows


def test_rows_joining_with_wider_prompts_grow_and_shift_the_buffers(llama):
    model, tokenizer = llama.model, llama.tokenizer
    first = rows_for(tokenizer, PROMPTS[:3], max_new_tokens=10)
    # PROMPTS[3] is wider than the first rows' prompts plus two steps: the running rows move right.
    later = rows_for(tokenizer, PROMPTS[3:], max_new_tokens=12)
    assert max(len(r.prompt_ids) for r in later) > max(len(r.prompt_ids) for r in first) + 2
    generator = BatchGenerator(model, tokenizer, decode="static")
    arrivals = Arrivals({2: later})
    generator.generate(first, arrivals)
    assert _ids(generator.last_joined) == _ids(later) and not arrivals.declined
    assert generator.static.buffers.rows == 8  # bucket of six slots, grown from four
    # Fewer steps than one batch after the other, and the joined rows got all their tokens.
    assert generator.last_decode_steps < 10 + 12
    assert all(r.finished for r in first + later)
    assert_like_generate(model, tokenizer, first + later)


def test_joining_rows_take_finished_rows_slots_first(llama):
    model, tokenizer = llama.model, llama.tokenizer
    first = rows_for(tokenizer, PROMPTS[:4], max_new_tokens=2)
    first[3].max_new_tokens = 16  # keeps the batch going after the others finish
    later = rows_for(tokenizer, PROMPTS[4:], max_new_tokens=5)
    generator = BatchGenerator(model, tokenizer, decode="static")
    generator.generate(first, Arrivals({4: later}))
    assert _ids(generator.last_joined) == _ids(later)
    assert generator.static.rows == 4 and generator.static.buffers.rows == 4  # no new slot was needed
    assert_like_generate(model, tokenizer, first + later)


def test_joining_rows_needing_more_columns_and_sharing_a_prefix(llama):
    model, tokenizer = llama.model, llama.tokenizer
    first = rows_for(tokenizer, PROMPTS[:2], max_new_tokens=4)
    # A few-shot group (one prefix prefilled once) that needs more columns than the batch has.
    later = rows_for(tokenizer, FEW_SHOT_PROMPTS, max_new_tokens=140)
    generator = BatchGenerator(model, tokenizer, decode="static")
    columns = []
    arrivals = Arrivals({1: later})
    take = arrivals.take
    arrivals.take = lambda g, slots: columns.append(g.static.buffers.columns) or take(g, slots)
    generator.generate(first, arrivals)
    assert generator.last_shared_prefix >= 16 and generator.last_skipped_tokens > 0
    assert generator.static.buffers.columns > columns[0]
    assert_like_generate(model, tokenizer, first + later)


def test_a_decoding_batch_prefills_a_prefix_apart_only_where_it_skips_enough_tokens(llama):
    """On a GPU a forward of its own for a prefix costs as long as thousands of tokens' work
    (`decode_prefix_saving`); a generation suite's one-shot prefix saves far less. The first rows and
    the rows joining them then each take one forward, prefix tokens included, with the same tokens."""
    model, tokenizer = llama.model, llama.tokenizer
    first = rows_for(tokenizer, FEW_SHOT_PROMPTS[:2], max_new_tokens=6)
    later = rows_for(tokenizer, FEW_SHOT_PROMPTS[2:], max_new_tokens=6)
    prefix = common_prefix_length([r.prompt_ids for r in first + later])

    def passes(saving: int) -> tuple[list[int], BatchGenerator]:
        generator = BatchGenerator(model, tokenizer, decode="static")
        generator.decode_prefix_saving = saving
        rows = first + later
        for row in rows:
            row.reset()
        seen = forward_tokens(model, lambda: generator.generate(rows[:2], Arrivals({1: rows[2:]})))
        assert _ids(generator.last_joined) == _ids(rows[2:])
        assert_like_generate(model, tokenizer, rows)
        return seen, generator

    shared, generator = passes(0)  # the CPU's rule: any prefix worth sharing is
    assert generator.last_shared_prefix >= 16 and generator.last_skipped_tokens > 0
    assert shared[0] == generator.last_shared_prefix  # the first rows' prefix, one row's forward
    own, generator = passes(len(FEW_SHOT_PROMPTS) * prefix)
    assert generator.last_shared_prefix == 0 and generator.last_skipped_tokens == 0
    prompts = [len(r.prompt_ids) for r in first]
    # No prefix forward: the first rows' one forward, then the joining rows' one.
    assert own[0] == 2 * max(prompts) and len(own) == len(shared) - 1


def test_grouped_query_model_rows_joining_twice(grouped):
    model, tokenizer = grouped.model, grouped.tokenizer
    first = rows_for(tokenizer, PROMPTS[:2], max_new_tokens=9)
    second = rows_for(tokenizer, PROMPTS[2:4], max_new_tokens=6)
    third = rows_for(tokenizer, PROMPTS[4:], max_new_tokens=7)
    generator = BatchGenerator(model, tokenizer, decode="static")
    generator.generate(first, Arrivals({0: second, 5: third}))
    assert _ids(generator.last_joined) == _ids(second + third)
    assert_like_generate(model, tokenizer, first + second + third)


def test_sampled_rows_draw_the_same_tokens_joined_or_alone(llama):
    model, tokenizer = llama.model, llama.tokenizer

    def sampled(prompts, seed):
        rows = rows_for(tokenizer, prompts, max_new_tokens=6, temperature=0.9)
        for i, row in enumerate(rows):
            row.seed = seed + i
            row.generator = torch.Generator().manual_seed(row.seed)
        return rows

    first, later = sampled(PROMPTS[:3], 10), sampled(PROMPTS[3:], 20)
    BatchGenerator(model, tokenizer, decode="static").generate(first, Arrivals({3: later}))
    alone_first, alone_later = sampled(PROMPTS[:3], 10), sampled(PROMPTS[3:], 20)
    generator = BatchGenerator(model, tokenizer, decode="dynamic")
    generator.generate(alone_first)
    generator.generate(alone_later)
    assert [r.tokens for r in first + later] == [r.tokens for r in alone_first + alone_later]
    assert any(r.tokens for r in later)


def test_rows_without_memory_to_join_are_declined_reset_and_the_batch_goes_on(llama, monkeypatch):
    model, tokenizer = llama.model, llama.tokenizer
    first = rows_for(tokenizer, PROMPTS[:3], max_new_tokens=8)
    later = rows_for(tokenizer, PROMPTS[3:], max_new_tokens=8)
    generator = BatchGenerator(model, tokenizer, decode="static")

    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(generator.static, "join", no_memory)
    arrivals = Arrivals({2: later})
    generator.generate(first, arrivals)
    assert _ids(arrivals.declined) == _ids(later) and generator.last_joined == []
    assert all(not r.tokens and not r.finished for r in later)
    assert_like_generate(model, tokenizer, first)
    monkeypatch.undo()
    generator.generate(later)
    assert_like_generate(model, tokenizer, later)


# --- the scheduler --------------------------------------------------------------------------------


class Arriving(Scheduler):
    """A scheduler whose queue receives `arrivals` as its first batch starts: as HELM's requests do
    while the model is busy, but at a known moment."""

    def __init__(self, *args, arrivals: list[Work], **kwargs):
        super().__init__(*args, **kwargs)
        self.arrivals = arrivals

    def _run_batch(self, batch):
        for work in self.arrivals:
            self._queue.put(work)
        self.arrivals = []
        return super()._run_batch(batch)


def _run(scheduler: Scheduler, first: Work, others: list[Work]) -> None:
    scheduler.start()
    scheduler._queue.put(first)
    for work in [first, *others]:
        assert work.done.wait(timeout=120)
    scheduler.stop()


def test_requests_arriving_during_a_decode_batch_join_it_and_each_is_answered_when_done(llama):
    model, tokenizer = llama.model, llama.tokenizer
    answered: list[str] = []
    first = Work(rows_for(tokenizer, PROMPTS[:2], max_new_tokens=3), on_done=lambda: answered.append("first"))
    later_rows = rows_for(tokenizer, PROMPTS[2:], max_new_tokens=12)
    # When the first request is answered, the rows that joined are still decoding.
    later = Work(later_rows, on_done=lambda: answered.append("later"))
    first.on_done = lambda: answered.append("first" if not all(r.finished for r in later_rows) else "late")
    stats = Stats()
    generator = BatchGenerator(model, tokenizer, decode="static")
    _run(Arriving(generator, stats, Limits(), arrivals=[later]), first, [later])
    assert answered == ["first", "later"]
    assert stats.batches == 1 and stats.joined_rows == 4 and stats.decode_steps < 3 + 12
    assert_like_generate(model, tokenizer, first.rows + later_rows)
    # Where the decode loop's time went: its first rows, the rows that joined, the steps (the rest).
    snapshot = stats.snapshot()
    assert 0 < snapshot["decode_start_seconds"] and 0 < snapshot["decode_join_seconds"]
    assert snapshot["decode_joins"] == 1  # the later request's rows joined at once
    assert snapshot["decode_start_seconds"] + snapshot["decode_join_seconds"] < snapshot["decode_seconds"]
    assert snapshot["decode_seconds"] <= snapshot["busy_seconds"]
    # The first rows' prefill, before the loop: inside the batch's busy time, outside the loop's.
    assert 0 < snapshot["decode_prefill_seconds"]
    assert snapshot["decode_prefill_seconds"] + snapshot["decode_seconds"] <= snapshot["busy_seconds"]


def test_nothing_joins_while_other_work_waits(llama):
    model, tokenizer = llama.model, llama.tokenizer
    first = Work(rows_for(tokenizer, PROMPTS[:2], max_new_tokens=6))
    scoring = Work(rows_for(tokenizer, PROMPTS[2:4], max_new_tokens=1))  # cannot join: it should not wait long
    later = Work(rows_for(tokenizer, PROMPTS[4:], max_new_tokens=6))
    stats = Stats()
    generator = BatchGenerator(model, tokenizer, decode="static")
    _run(Arriving(generator, stats, Limits(), arrivals=[scoring, later]), first, [scoring, later])
    assert stats.joined_rows == 0 and stats.batches == 3
    assert_like_generate(model, tokenizer, first.rows + scoring.rows + later.rows)


def test_joins_stay_within_the_batch_limits(llama):
    model, tokenizer = llama.model, llama.tokenizer
    first = Work(rows_for(tokenizer, PROMPTS[:3], max_new_tokens=6))
    later = Work(rows_for(tokenizer, PROMPTS[3:], max_new_tokens=6))
    stats = Stats()
    generator = BatchGenerator(model, tokenizer, decode="static")
    _run(Arriving(generator, stats, Limits(max_batch_size=4), arrivals=[later]), first, [later])
    assert stats.joined_rows == 0 and stats.batches == 2
    assert_like_generate(model, tokenizer, first.rows + later.rows)


def test_a_gathers_later_decode_batches_join_the_first(llama):
    """Two runs' rows gathered together, too many for one batch, are planned as a batch each (one
    prefix each); the second joins the first once its rows finish, instead of waiting for it to end."""
    from evaluation.engine.server.batching import plan_batches

    model, tokenizer = llama.model, llama.tokenizer
    runs = [FEW_SHOT_PROMPTS[0][:-20] + f" case {i}?" for i in range(8)]
    others = ["Another few-shot prefix entirely, with examples of its own. " * 3 + f"Item {i}:" for i in range(8)]
    first, second = rows_for(tokenizer, runs, max_new_tokens=2), rows_for(tokenizer, others, max_new_tokens=5)
    first[0].max_new_tokens = second[0].max_new_tokens = 12  # whichever runs first goes on with one row
    rows = first + second
    limits = Limits(max_batch_size=9)
    assert len(plan_batches(rows, limits)) == 2
    stats = Stats()
    Scheduler(BatchGenerator(model, tokenizer, decode="static"), stats, limits).run(rows)
    assert stats.batches == 1 and stats.joined_rows == 8 and stats.decode_steps < 12 + 12
    assert_like_generate(model, tokenizer, rows)


def test_no_joins_when_switched_off(llama):
    model, tokenizer = llama.model, llama.tokenizer
    first = Work(rows_for(tokenizer, PROMPTS[:3], max_new_tokens=4))
    later = Work(rows_for(tokenizer, PROMPTS[3:], max_new_tokens=4))
    stats = Stats()
    generator = BatchGenerator(model, tokenizer, decode="static")
    _run(Arriving(generator, stats, Limits(), arrivals=[later], joins=False), first, [later])
    assert stats.joined_rows == 0 and stats.batches == 2


def test_a_declined_join_runs_after_the_batch_and_nothing_else_joins_it(llama, monkeypatch):
    model, tokenizer = llama.model, llama.tokenizer
    first = Work(rows_for(tokenizer, PROMPTS[:2], max_new_tokens=6))
    later = Work(rows_for(tokenizer, PROMPTS[2:4], max_new_tokens=6))
    last = Work(rows_for(tokenizer, PROMPTS[4:], max_new_tokens=6))
    stats = Stats()
    generator = BatchGenerator(model, tokenizer, decode="static")

    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(generator.static, "join", no_memory)
    _run(Arriving(generator, stats, Limits(), arrivals=[later, last]), first, [later, last])
    assert stats.declined_joins == 1 and stats.joined_rows == 0
    assert_like_generate(model, tokenizer, first.rows + later.rows + last.rows)


def test_batches_outside_the_profilers_window_still_take_joining_rows(llama, monkeypatch, tmp_path):
    """ENGINE_PROFILE_DIR replays only its window's batches (those run without joins, so that the replay
    is the same batch): every other batch of the profiled evaluation runs as it would unprofiled."""
    monkeypatch.setenv("ENGINE_PROFILE_DIR", str(tmp_path / "profile"))
    monkeypatch.setenv("ENGINE_PROFILE_START", "5")
    model, tokenizer = llama.model, llama.tokenizer
    first = Work(rows_for(tokenizer, PROMPTS[:2], max_new_tokens=3))
    later = Work(rows_for(tokenizer, PROMPTS[2:], max_new_tokens=12))
    stats = Stats()
    scheduler = Arriving(BatchGenerator(model, tokenizer, decode="static"), stats, Limits(), arrivals=[later])
    assert scheduler.profiler is not None
    _run(scheduler, first, [later])
    assert stats.batches == 1 and stats.joined_rows == 4
    assert_like_generate(model, tokenizer, first.rows + later.rows)


@pytest.mark.parametrize("shared", [False, True])
def test_a_decoding_batch_makes_its_buffers_before_its_prefill(llama, monkeypatch, shared):
    """Once, at the shape `start` then finds (the padded width counts the longest prefix and the
    longest rest when rows of two runs share their own prefixes)."""
    model, tokenizer = llama.model, llama.tokenizer
    if shared:
        heads = ["Questions about units, with answers. " * 4, "Dates: " * 3]
        prompts = [heads[i % 2] + f"Question {i}: what comes after {i}? Answer:" for i in range(6)]
    else:
        prompts = PROMPTS[:3]
    rows = rows_for(tokenizer, prompts, max_new_tokens=6)
    generator = BatchGenerator(model, tokenizer, decode="static")
    from evaluation.engine.server import static_decode

    events = []
    buffers, prefill = static_decode._Buffers, generator._prefill
    monkeypatch.setattr(static_decode, "_Buffers", lambda *a: events.append("buffers") or buffers(*a))
    monkeypatch.setattr(generator, "_prefill", lambda *a: events.append("prefill") or prefill(*a))
    generator.generate(rows)
    assert events == ["buffers", "prefill"]
    assert (generator.last_shared_prefix > 0) == shared
    assert generator.last_decode_times["start"] >= 0 and generator.last_decode_times["prefill"] >= 0
    assert_like_generate(model, tokenizer, rows)
