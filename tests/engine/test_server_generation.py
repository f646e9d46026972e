"""The batched generator and scheduler agree, token for token, with one-at-a-time generation (fp32, CPU)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from evaluation.engine.server.batching import Limits, Scheduler, plan_batches
from evaluation.engine.server.generation import (
    BatchGenerator,
    Row,
    _shared_length,
    adjacent_shared,
    common_prefix_length,
)
from evaluation.engine.server.stats import Stats
from tests.engine.reference import (
    FEW_SHOT_PROMPTS,
    PROMPTS,
    assert_close,
    greedy_reference,
    logprob_reference,
    rows_for,
)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from evaluation.engine.loading import load_model

    return load_model(tiny_model_dir, device="cpu", dtype="float32")


def test_mixed_length_batch_equals_sequential_generate(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    assert getattr(model.config, "_attn_implementation", "sdpa") == "sdpa"
    rows = rows_for(tokenizer, PROMPTS, max_new_tokens=10)
    BatchGenerator(model, tokenizer).generate(rows)
    assert len({len(r.prompt_ids) for r in rows}) > 3, "the batch must really mix lengths"
    for row in rows:
        assert row.tokens == greedy_reference(model, tokenizer, row.prompt_ids, 10)
        _, expected = logprob_reference(model, row.prompt_ids, row.tokens)
        assert_close(row.logprobs, expected)
        assert row.finish_reason in {"length", "eos"}


def test_single_token_requests_take_one_forward_and_match(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = rows_for(tokenizer, PROMPTS + FEW_SHOT_PROMPTS, max_new_tokens=1)
    generator = BatchGenerator(model, tokenizer)
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        generator.generate(rows)
    finally:
        handle.remove()
    assert len(calls) == 1
    for row in rows:
        assert row.tokens == greedy_reference(model, tokenizer, row.prompt_ids, 1)
        assert_close(row.logprobs, logprob_reference(model, row.prompt_ids, row.tokens)[1])


@pytest.mark.parametrize("max_new_tokens", [1, 6])
def test_shared_few_shot_prefix_is_computed_once_and_changes_nothing(loaded, max_new_tokens):
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = rows_for(tokenizer, FEW_SHOT_PROMPTS, max_new_tokens=max_new_tokens)
    generator = BatchGenerator(model, tokenizer)
    generator.generate(rows)
    shared = common_prefix_length([r.prompt_ids for r in rows])
    assert generator.last_shared_prefix == shared >= 16
    for row in rows:
        assert row.tokens == greedy_reference(model, tokenizer, row.prompt_ids, max_new_tokens)
        assert_close(row.logprobs, logprob_reference(model, row.prompt_ids, row.tokens)[1])


def test_echo_prompt_logprobs_match_a_plain_forward(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = rows_for(tokenizer, PROMPTS, max_new_tokens=0, echo=True)
    BatchGenerator(model, tokenizer).generate(rows)
    for row in rows:
        assert row.tokens == []
        expected, _ = logprob_reference(model, row.prompt_ids, [])
        assert row.prompt_logprobs[0] == 0.0
        assert_close(row.prompt_logprobs, expected)


def test_echo_with_generation(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = rows_for(tokenizer, PROMPTS[:3], max_new_tokens=4, echo=True)
    BatchGenerator(model, tokenizer).generate(rows)
    for row in rows:
        assert row.tokens == greedy_reference(model, tokenizer, row.prompt_ids, 4)
        prompt_lp, gen_lp = logprob_reference(model, row.prompt_ids, row.tokens)
        assert_close(row.prompt_logprobs, prompt_lp)
        assert_close(row.logprobs, gen_lp)


def _sampled(tokenizer, prompt: str, seed: int) -> Row:
    return Row(
        prompt_ids=tokenizer(prompt)["input_ids"],
        max_new_tokens=8,
        temperature=0.9,
        top_p=0.95,
        generator=torch.Generator().manual_seed(seed),
        seed=seed,
    )


def test_sampling_does_not_depend_on_the_batch(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer)
    alone = _sampled(tokenizer, PROMPTS[1], 7)
    generator.generate([alone])
    batch = [_sampled(tokenizer, p, 7) for p in PROMPTS]
    generator.generate(batch)
    assert batch[1].tokens == alone.tokens
    _, expected = logprob_reference(model, alone.prompt_ids, alone.tokens)
    assert_close(alone.logprobs, expected)
    other_seed = [_sampled(tokenizer, PROMPTS[1], s) for s in range(1, 6)]
    generator.generate(other_seed)
    assert any(r.tokens != alone.tokens for r in other_seed)


def test_scheduler_splits_by_limits_and_results_stay_equal(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    limits = Limits(max_batch_size=2, max_batch_tokens=64, max_echo_tokens=40)
    rows = rows_for(tokenizer, PROMPTS, max_new_tokens=5) + rows_for(tokenizer, PROMPTS, max_new_tokens=0, echo=True)
    plan = plan_batches(rows, limits)
    assert all(len(batch) <= 2 for batch in plan)
    assert sorted(id(r) for batch in plan for r in batch) == sorted(id(r) for r in rows)
    assert all(len({r.echo for r in batch}) == 1 for batch in plan)
    stats = Stats()
    Scheduler(BatchGenerator(model, tokenizer), stats, limits).run(rows)
    assert stats.batches == len(plan)
    for row in rows[: len(PROMPTS)]:
        assert row.tokens == greedy_reference(model, tokenizer, row.prompt_ids, 5)
    for row in rows[len(PROMPTS) :]:
        assert_close(row.prompt_logprobs, logprob_reference(model, row.prompt_ids, [])[0])


def test_plan_sorts_decoding_rows_by_length(loaded):
    tokenizer = loaded.tokenizer
    rows = rows_for(tokenizer, PROMPTS, max_new_tokens=2)
    (batch,) = plan_batches(rows, Limits())
    lengths = [len(r.prompt_ids) for r in batch]
    assert lengths == sorted(lengths)


@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_decoding_rows_of_two_few_shot_prompts_interleaved_run_in_one_batch_each_from_its_prefix(loaded, decode):
    """As when several helm-run processes (or tasks) send at once: both runs' decoding rows fit the
    limits, so they run as one batch (one prefill, no join), each run's rows from its own prefix."""
    model, tokenizer = loaded.model, loaded.tokenizer
    heads = ["Questions about units, with answers. " * 4, "Questions about dates, with answers. " * 4]
    prompts = [heads[i % 2] + f"Question {i}: what comes after {i}? Answer:" for i in range(24)]
    rows = rows_for(tokenizer, prompts, max_new_tokens=2)
    limits = Limits(merge_padding_tokens=1000)  # as on a GPU (a forward's worth)
    (batch,) = plan_batches(rows, limits)
    assert len(batch) == 24
    assert len(plan_batches(rows, Limits())) == 2  # on a CPU: no padding added (the runs' widths differ)
    stats = Stats()
    generator = BatchGenerator(model, tokenizer, decode=decode)
    Scheduler(generator, stats, limits).run(rows)
    assert stats.batches == 1 and stats.joined_rows == 0
    # Each run's prefix was prefilled once: all but one row's prefix tokens of each run skipped.
    assert generator.last_shared_prefix >= 16 and stats.shared_prefix_tokens >= 2 * 11 * 16
    for row in rows:
        assert row.tokens == greedy_reference(model, tokenizer, row.prompt_ids, 2)


def test_decoding_runs_split_by_the_limits_keep_a_run_to_a_batch(loaded):
    tokenizer = loaded.tokenizer
    heads = ["Questions about units, with answers. " * 4, "Questions about dates, with answers. " * 4]
    prompts = [heads[i % 2] + f"Question {i}: what comes after {i}? Answer:" for i in range(24)]
    plan = plan_batches(rows_for(tokenizer, prompts, max_new_tokens=2),
                        Limits(max_batch_size=12, merge_padding_tokens=1000))  # fmt: skip
    assert [len(b) for b in plan] == [12, 12]
    for batch in plan:
        assert len({tuple(r.prompt_ids[:16]) for r in batch}) == 1


def test_a_short_run_is_not_padded_to_a_long_one_beyond_a_forwards_worth(loaded):
    """Put together, a run of short prompts would be padded to the long run's width in the prefill:
    that is worth it only while the padding costs less than the join it saves."""
    tokenizer = loaded.tokenizer
    short = [f"Say {i}:" for i in range(10)]
    long = ["A long few-shot prefix with many worked examples of its own. " * 6 + f"Item {i}:" for i in range(10)]
    rows = rows_for(tokenizer, short + long, max_new_tokens=2)
    # Together, the ten short rows are padded from their own width to the long run's.
    padding = 10 * (max(len(r.prompt_ids) for r in rows[10:]) - max(len(r.prompt_ids) for r in rows[:10]))
    assert len(plan_batches(rows, Limits(merge_padding_tokens=padding - 1))) == 2
    assert len(plan_batches(rows, Limits(merge_padding_tokens=padding))) == 1


def test_few_decoding_rows_with_a_common_head_are_not_split_off_into_small_batches(loaded):
    tokenizer = loaded.tokenizer
    prompts = [f"Prompt number {i} is unlike the others in every way, {i * 7}" for i in range(6)]
    prompts += ["Shared head of three prompts, long enough to matter here: " + str(i) for i in range(3)]
    (batch,) = plan_batches(rows_for(tokenizer, prompts, max_new_tokens=2), Limits())
    assert len(batch) == 9


def test_runs_that_share_their_instructions_still_get_batches_of_their_own_few_shot_prefix(loaded):
    """Two tasks with the same instructions but their own examples, interleaved: grouping by a short
    head would mix them and share only the instructions (seen with HELM's multiple-choice runs)."""
    tokenizer = loaded.tokenizer
    instructions = "The following are multiple choice questions, with answers, to think about. "
    examples = [
        "Question: how many metres in a kilometre? Answer: 1000. " * 5,
        "Question: which day follows Monday? Answer: Tuesday. " * 5,
    ]
    prompts = [instructions + examples[i % 2] + f"Question: {i} and {i * 3}? Answer:" for i in range(40)]
    rows = rows_for(tokenizer, prompts, max_new_tokens=2)
    plan = plan_batches(rows, Limits(max_batch_size=12))
    own = [len(tokenizer(instructions + e)["input_ids"]) for e in examples]
    assert len(plan) == 4
    for batch in plan:
        assert common_prefix_length([r.prompt_ids for r in batch]) >= min(own) - 2


def test_neighbours_shared_length_from_any_guess_is_their_common_prefix():
    rnd = random.Random(5)
    for _ in range(5000):
        base = [rnd.randrange(3) for _ in range(rnd.randrange(40))]
        a = base[: rnd.randrange(len(base) + 1)] + [rnd.randrange(3) for _ in range(rnd.randrange(5))]
        b = base[: rnd.randrange(len(base) + 1)] + [rnd.randrange(3) for _ in range(rnd.randrange(5))]
        guess = rnd.randrange(45)
        want = common_prefix_length([a, b]) if a and b else 0
        assert _shared_length(a, b, guess) == want, (a, b, guess)
    seqs = sorted(base + [rnd.randrange(3) for _ in range(rnd.randrange(9))] for _ in range(300))
    assert adjacent_shared(seqs) == [
        common_prefix_length([a, b]) if a and b else 0 for a, b in itertools.pairwise(seqs)
    ]


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[5, 6]]) == 2
    assert common_prefix_length([[1], [2]]) == 0
    assert common_prefix_length([[], [1]]) == 0
    assert common_prefix_length([list(range(600)), list(range(599)) + [0]]) == 599
