"""Batches whose rows start from different few-shot prefixes (several HELM runs at once), fp32 on CPU:
each row from its own run's prefix in one forward, results equal to `generate`."""

from __future__ import annotations

import pytest
import torch

from evaluation.engine.server.batching import Limits, Scheduler, plan_batches, prefix_clusters
from evaluation.engine.server.generation import BatchGenerator, prefix_groups
from evaluation.engine.server.kv_cache import cache_tensors, gathered
from evaluation.engine.server.stats import Stats
from tests.engine.reference import STORE_BYTES, assert_like_generate, forward_tokens, rows_for, static_generator

INSTRUCTIONS = "The following are multiple choice questions, with answers, to think about. "
# Long enough that four rows of a run save MIN_PREFIX_SAVING tokens by sharing their prefix.
EXAMPLES = [
    "Question: how many metres in a kilometre? Answer: 1000. " * 15,
    "Question: which day follows Monday? Answer: Tuesday. " * 16,
    "Question: what colour is the sky on a clear day? Answer: blue. " * 13,
]


def run_prompts(run: int, count: int, start: int = 0) -> list[str]:
    return [INSTRUCTIONS + EXAMPLES[run] + f"Question: {i} and {i * 3}? Answer:" for i in range(start, start + count)]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from evaluation.engine.loading import load_model

    return load_model(tiny_model_dir, device="cpu", dtype="float32")


def test_a_straggler_of_one_run_does_not_drag_the_next_run_down_to_the_common_instructions(loaded):
    """Sorted, a lone row of run 0 comes right before run 1's rows and shares only the instructions
    with them; it used to open the group, which then shared only those tokens."""
    tokenizer = loaded.tokenizer
    first, bulk = sorted([0, 1], key=lambda run: tokenizer(run_prompts(run, 1)[0])["input_ids"])
    rows = rows_for(tokenizer, run_prompts(first, 1) + run_prompts(bulk, 10), max_new_tokens=2)
    assert rows[0].prompt_ids < min(r.prompt_ids for r in rows[1:])  # the straggler sorts first
    clusters, mixed = prefix_clusters(rows)
    assert [len(c) for c in clusters] == [10] and mixed == [rows[0]]
    groups = prefix_groups([r.prompt_ids for r in rows])
    own = len(tokenizer(INSTRUCTIONS + EXAMPLES[bulk])["input_ids"])
    (lone, alone_shares), (run, shared) = groups
    assert (lone, alone_shares) == ([0], len(rows[0].prompt_ids))  # a lone row "shares" all of itself
    assert sorted(run) == list(range(1, 11)) and shared >= own - 2


def test_prefix_groups_keeps_a_run_together_and_lone_unrelated_rows_apart():
    run = [[1] * 40 + [i, i + 1] for i in range(5)]
    groups = prefix_groups(run + [[9, 9, 9], [1] * 10 + [7] * 30])
    assert sorted(sorted(g) for g, _ in groups) == [[0, 1, 2, 3, 4], [5], [6]]
    assert dict((tuple(sorted(g)), n) for g, n in groups)[(0, 1, 2, 3, 4)] == 40


@pytest.mark.parametrize("max_new_tokens", [1, 5])
def test_rows_of_three_runs_share_one_forward_each_from_its_own_prefix(loaded, max_new_tokens):
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    prompts = [p for trio in zip(run_prompts(0, 4), run_prompts(1, 4), run_prompts(2, 4), strict=True) for p in trio]
    first = rows_for(tokenizer, prompts, max_new_tokens=max_new_tokens)
    passes = forward_tokens(model, lambda: generator.generate(first))
    assert len(generator.prefixes) == 3 and not generator.last_prefix_reused
    assert len(passes) - (max_new_tokens - 1) == 4  # three prefixes, then the rows together
    own = [len(tokenizer(INSTRUCTIONS + e)["input_ids"]) for e in EXAMPLES]
    assert generator.last_shared_prefix >= max(own) - 2
    assert generator.last_skipped_tokens >= 3 * sum(n - 2 for n in own)

    later = rows_for(tokenizer, [*run_prompts(2, 3, 10), *run_prompts(0, 2, 10)], max_new_tokens=max_new_tokens)
    passes = forward_tokens(model, lambda: generator.generate(later))
    assert generator.last_prefix_reused
    assert len(passes) - (max_new_tokens - 1) == 1  # both prefixes from the store
    assert_like_generate(model, tokenizer, first + later)


def test_a_row_that_shares_nothing_rides_along_with_runs_that_do(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    rows = rows_for(tokenizer, [*run_prompts(0, 4), "A short prompt of its own", *run_prompts(1, 4)], max_new_tokens=3)
    generator.generate(rows)
    assert generator.last_shared_prefix >= 16
    assert_like_generate(model, tokenizer, rows)


def test_a_batch_of_several_prefixes_feeds_the_static_decoder_too(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = static_generator(model, tokenizer)
    rows = rows_for(tokenizer, [*run_prompts(0, 4), *run_prompts(2, 4)], max_new_tokens=6)
    generator.generate(rows)
    assert generator.static.buffers is not None and generator.last_shared_prefix >= 16
    assert_like_generate(model, tokenizer, rows)


def test_gathered_puts_each_prefix_at_the_end_and_leaves_the_stored_caches_as_they_were(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    caches = []
    for text in (INSTRUCTIONS + EXAMPLES[0], INSTRUCTIONS):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.inference_mode():
            caches.append(model(input_ids=ids, use_cache=True).past_key_values)
    lengths = [cache_tensors(c)[0][0].shape[-2] for c in caches]
    before = [[t.clone() for pair in cache_tensors(c) for t in pair] for c in caches]
    new = gathered([(caches[0], lengths[0], 2), (None, 0, 1), (caches[1], lengths[1], 3)])
    width = max(lengths)
    for layer, (keys, values) in enumerate(cache_tensors(new)):
        assert keys.shape[0] == 6 and keys.shape[-2] == width
        for t, kv in ((keys, 0), (values, 1)):
            source = [cache_tensors(c)[layer][kv] for c in caches]
            assert torch.equal(t[0:2], source[0].expand(2, *source[0].shape[1:]))
            assert not t[2].any()
            assert not t[3:, ..., : width - lengths[1], :].any()
            assert torch.equal(t[3:, ..., width - lengths[1] :, :], source[1].expand(3, *source[1].shape[1:]))
    after = [[t for pair in cache_tensors(c) for t in pair] for c in caches]
    assert all(torch.equal(a, b) for x, y in zip(before, after, strict=True) for a, b in zip(x, y, strict=True))


def test_single_token_rows_of_several_runs_are_planned_together_in_prefix_order(loaded):
    tokenizer = loaded.tokenizer
    prompts = [p for pair in zip(run_prompts(0, 10), run_prompts(1, 10), strict=True) for p in pair]
    rows = rows_for(tokenizer, prompts, max_new_tokens=1)
    (batch,) = plan_batches(rows, Limits())
    assert len(batch) == 20
    widest = max(len(r.prompt_ids) for r in rows)
    # Split by a token limit, a batch holds consecutive rows of few runs, and its cost counts the
    # longest prefix plus the longest remainder (wider than any one prompt).
    limit = widest * 12
    plan = plan_batches(rows, Limits(max_batch_tokens=limit, prefix_store_tokens=0))
    assert [r for b in plan for r in b] == sorted(rows, key=lambda r: r.prompt_ids)
    for batch in plan:
        groups = prefix_groups([r.prompt_ids for r in batch])
        shares = {i: n if len(g) > 1 else 0 for g, n in groups for i in g}
        width = max(shares.values()) + max(len(r.prompt_ids) - shares[i] for i, r in enumerate(batch))
        assert len(batch) * (width + 1) <= limit


def test_the_scheduler_runs_interleaved_runs_in_one_batch_and_results_do_not_change(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    prompts = [p for trio in zip(run_prompts(0, 5), run_prompts(1, 5), run_prompts(2, 5), strict=True) for p in trio]
    rows = rows_for(tokenizer, prompts, max_new_tokens=1)
    stats = Stats()
    Scheduler(BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES), stats, Limits()).run(rows)
    assert stats.batches == 1
    own = [len(tokenizer(INSTRUCTIONS + e)["input_ids"]) for e in EXAMPLES]
    assert stats.shared_prefix_tokens >= 4 * sum(n - 2 for n in own)
    assert_like_generate(model, tokenizer, rows)


def test_a_few_rows_sharing_a_short_prefix_beside_other_runs_get_no_forward_of_their_own(loaded):
    """Two rows that share 100-odd tokens would save fewer than MIN_PREFIX_SAVING tokens: on a GPU
    the extra forward costs more than that."""
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer)
    short = ["Question: how many metres in a kilometre? Answer: 1000. " + f"Question: {i}?" for i in range(2)]
    rows = rows_for(tokenizer, [*run_prompts(0, 4), *short], max_new_tokens=1)
    passes = forward_tokens(model, lambda: generator.generate(rows))
    assert len(passes) == 2  # run 0's prefix, then every row
    assert_like_generate(model, tokenizer, rows)
