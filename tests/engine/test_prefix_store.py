"""Few-shot prefixes kept from one batch to the next (fp32, CPU): reused, they change no result."""

from __future__ import annotations

import pytest
import torch

from evaluation.engine.server.batching import Limits, Scheduler
from evaluation.engine.server.generation import BatchGenerator, Row
from evaluation.engine.server.kv_cache import PrefixStore, cache_bytes, expanded, map_cache
from evaluation.engine.server.stats import Stats
from tests.engine.reference import (
    FEW_SHOT,
    FEW_SHOT_PROMPTS,
    STORE_BYTES,
    assert_like_generate,
    forward_tokens,
    rows_for,
    static_generator,
)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from evaluation.engine.loading import load_model

    return load_model(tiny_model_dir, device="cpu", dtype="float32")


@pytest.mark.parametrize("max_new_tokens", [1, 5])
def test_a_later_batch_reuses_the_stored_prefix_and_its_results_do_not_change(loaded, max_new_tokens):
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    first = rows_for(tokenizer, FEW_SHOT_PROMPTS[:2], max_new_tokens=max_new_tokens)
    generator.generate(first)
    assert not generator.last_prefix_reused and len(generator.prefixes) == 1
    shared = generator.last_shared_prefix
    assert shared >= 16

    later = rows_for(tokenizer, FEW_SHOT_PROMPTS[1:], max_new_tokens=max_new_tokens)
    passes = forward_tokens(model, lambda: generator.generate(later))
    assert generator.last_prefix_reused and generator.last_shared_prefix == shared
    # No pass over the prefix: the first pass holds only the rows' own tokens (padded, or packed
    # side by side for single-token rows of models that allow it).
    if generator.last_packed:
        assert max_new_tokens == 1 and passes[0] == sum(len(r.prompt_ids) - shared for r in later)
    else:
        assert passes[0] == len(later) * (max(len(r.prompt_ids) for r in later) - shared)
    assert_like_generate(model, tokenizer, first + later)


def test_a_single_request_reuses_a_stored_prefix(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    generator.generate(rows_for(tokenizer, FEW_SHOT_PROMPTS[:2], max_new_tokens=1))
    (alone,) = rows_for(tokenizer, FEW_SHOT_PROMPTS[2:], max_new_tokens=3)
    generator.generate([alone])
    assert generator.last_prefix_reused
    assert_like_generate(model, tokenizer, [alone])


def test_without_a_store_nothing_is_kept_and_a_single_request_shares_nothing(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer)
    assert generator.prefixes is None
    generator.generate(rows_for(tokenizer, FEW_SHOT_PROMPTS[:2], max_new_tokens=1))
    generator.generate(rows_for(tokenizer, FEW_SHOT_PROMPTS[2:], max_new_tokens=1))
    assert generator.last_shared_prefix == 0 and not generator.last_prefix_reused


def test_interleaved_runs_each_keep_their_prefix_and_later_batches_skip_every_prefill(loaded):
    """Two runs (as from two helm-run processes) alternate; one batch holds both, each row starting
    from its run's prefix; once both are stored, no batch prefills one again and the stats count
    every prompt token a batch skipped."""
    model, tokenizer = loaded.model, loaded.tokenizer
    heads = ["Questions about units, with answers. " * 12, "Questions about dates, with answers. " * 12]

    def rows(start: int) -> list[Row]:
        prompts = [heads[i % 2] + f"Question {i}: what comes after {i}? Answer:" for i in range(start, start + 16)]
        return rows_for(tokenizer, prompts, max_new_tokens=1)

    stats = Stats()
    scheduler = Scheduler(BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES), stats, Limits())
    scheduler.run(rows(0))
    assert (stats.batches, stats.prefix_reuses) == (1, 0)
    assert len(scheduler.generator.prefixes) == 2
    later = rows(100)
    skipped_before = stats.shared_prefix_tokens
    passes = forward_tokens(model, lambda: scheduler.run(later))
    assert (stats.batches, stats.prefix_reuses) == (2, 1)
    assert len(passes) == 1  # both prefixes came from the store
    shared = [len(tokenizer(h)["input_ids"]) for h in heads]
    assert stats.shared_prefix_tokens - skipped_before >= 16 * (min(shared) - 2)
    assert_like_generate(model, tokenizer, later)


def test_a_prefix_only_a_little_shorter_than_the_batch_s_is_reused(loaded):
    """A batch may share a few question tokens more than the stored few-shot prefix: it still serves."""
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    generator.generate(
        rows_for(tokenizer, [FEW_SHOT + "Question: Is it one? Answer:", FEW_SHOT + "Query?"], max_new_tokens=1)
    )
    stored = generator.last_shared_prefix
    rows = rows_for(
        tokenizer,
        [FEW_SHOT + "Question: Is it two? Answer:", FEW_SHOT + "Question: Is it ten? Answer:"],
        max_new_tokens=2,
    )
    generator.generate(rows)
    assert generator.last_prefix_reused and generator.last_shared_prefix == stored
    assert_like_generate(model, tokenizer, rows)


def test_the_stored_cache_is_left_as_it_was_by_the_batches_that_use_it(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    generator.generate(rows_for(tokenizer, FEW_SHOT_PROMPTS[:2], max_new_tokens=4))
    (key,) = generator.prefixes._entries
    stored = generator.prefixes.find(list(key))[1]
    before: list[torch.Tensor] = []
    map_cache(stored, lambda t: before.append(t.clone()) or t)
    generator.generate(rows_for(tokenizer, FEW_SHOT_PROMPTS, max_new_tokens=4))
    generator.generate(rows_for(tokenizer, FEW_SHOT_PROMPTS[2:], max_new_tokens=4))
    after: list[torch.Tensor] = []
    map_cache(stored, lambda t: after.append(t) or t)
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert all(t.shape[0] == 1 and t.shape[-2] == len(key) for t in after)


def test_expanded_copies_rows_and_keeps_the_one_row_cache(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    ids = torch.tensor([tokenizer(FEW_SHOT)["input_ids"]])
    with torch.inference_mode():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    three = expanded(cache, 3)
    assert cache_bytes(three) == 3 * cache_bytes(cache)
    shapes: list[tuple] = []
    map_cache(three, lambda t: shapes.append(tuple(t.shape)) or t)
    map_cache(cache, lambda t: shapes.append(tuple(t.shape)) or t)
    half = len(shapes) // 2
    assert all(a[0] == 3 and b[0] == 1 and a[1:] == b[1:] for a, b in zip(shapes[:half], shapes[half:], strict=True))


class _Entry:
    """A stand-in cache of the old layout whose size is `tokens` float32 values."""

    def __init__(self, tokens: int):
        self.key_cache = [torch.zeros(tokens)]
        self.value_cache = [torch.zeros(0)]


def test_store_finds_the_longest_stored_prefix_and_drops_the_least_recently_used():
    store = PrefixStore(max_bytes=4 * 100, max_entries=3)
    store.add([1, 2, 3], _Entry(30))
    store.add([1, 2, 3, 4, 5], _Entry(30))
    assert store.find([1, 2, 3, 4, 5, 6])[0] == 5
    assert store.find([1, 2, 3, 9])[0] == 3
    assert store.find([1, 2]) is None and store.find([7, 1, 2, 3]) is None
    store.add([8, 8], _Entry(30))  # 90 of 100 values stored
    store.add([9, 9], _Entry(30))  # no room: the least recently used entry, [1, 2, 3, 4, 5], goes
    assert store.find([1, 2, 3, 4, 5, 6])[0] == 3
    assert len(store) == 3 and store.bytes == 4 * 90
    store.add([5], _Entry(101))  # larger than the whole store: not kept
    assert store.find([5]) is None
    store.clear()
    assert len(store) == 0 and store.bytes == 0


def test_running_out_of_memory_splits_the_batch_and_empties_the_store(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer

    left_in_store = []

    class Tight(BatchGenerator):
        def generate(self, rows, joining=None, **kwargs):
            if len(rows) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().generate(rows, joining, **kwargs)

        def release_memory(self):
            super().release_memory()
            left_in_store.append(len(self.prefixes))

    generator = Tight(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    generator.generate(rows_for(tokenizer, FEW_SHOT_PROMPTS[:2], max_new_tokens=1))
    assert len(generator.prefixes) == 1
    stats = Stats()
    limits = Limits()
    rows = rows_for(tokenizer, FEW_SHOT_PROMPTS + FEW_SHOT_PROMPTS[:1], max_new_tokens=2)
    Scheduler(generator, stats, limits).run(rows)
    assert stats.out_of_memory_splits == 1 and limits.max_batch_size == 2
    assert left_in_store == [0]  # emptied before the halves ran
    assert_like_generate(model, tokenizer, rows)


@pytest.mark.parametrize("pipelined", [False, True])
def test_the_halves_of_a_batch_that_ran_out_of_memory_run_without_its_tensors(loaded, pipelined):
    """The failed attempt's tensors (its cache, its activations) must be gone before the halves run:
    the exception's traceback holds its frames, and halves that ran inside the handler ran out of
    memory in turn, down to single rows (seen on the GPU at 6.7 B, session 17)."""
    import gc
    import weakref

    model, tokenizer = loaded.model, loaded.tokenizer
    attempts: list[weakref.ref] = []
    alive_at_retry: list[bool] = []

    class Tight(BatchGenerator):
        def generate(self, rows, joining=None, **kwargs):
            if attempts:
                gc.collect()  # reference cycles aside, only a live frame could hold it
                alive_at_retry.append(attempts[0]() is not None)
            if len(rows) > 2:
                cache = torch.zeros(1000)  # stands for the failed attempt's GPU memory
                attempts.append(weakref.ref(cache))
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().generate(rows, joining, **kwargs)

    stats = Stats()
    rows = rows_for(tokenizer, FEW_SHOT_PROMPTS[:4], max_new_tokens=1)
    scheduler = Scheduler(Tight(model, tokenizer), stats, Limits(), pipelined=pipelined)
    scheduler.run(rows)
    assert stats.out_of_memory_splits == 1 and alive_at_retry == [False, False] and stats.batches == 2
    assert_like_generate(model, tokenizer, rows)


def test_scoring_batches_leave_room_for_the_store_and_decoding_batches_take_it(loaded):
    """Single-token batches are planned beside the store; a decoding batch may use the whole limit,
    and empties the store first when it does: more rows per decode step is worth more there."""
    from evaluation.engine.server.batching import plan_batches

    model, tokenizer = loaded.model, loaded.tokenizer
    prompts = [FEW_SHOT + f"Question: what is {i} plus {i}? Answer:" for i in range(12)]
    width = max(len(tokenizer(p)["input_ids"]) for p in prompts)
    limits = Limits(max_batch_size=64, max_batch_tokens=(width + 4) * 8, prefix_store_tokens=(width + 4) * 4)
    scoring = plan_batches(rows_for(tokenizer, prompts, max_new_tokens=1), limits)
    decoding = plan_batches(rows_for(tokenizer, prompts, max_new_tokens=4), limits)
    assert max(len(b) for b in scoring) <= 4 < max(len(b) for b in decoding) <= 8

    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    scheduler = Scheduler(generator, Stats(), limits)
    scheduler.run(rows_for(tokenizer, prompts[:8], max_new_tokens=1))
    assert len(generator.prefixes) == 1
    scheduler.run(rows_for(tokenizer, prompts[:3], max_new_tokens=4))  # small enough: the store stays
    assert len(generator.prefixes) == 1 and generator.last_prefix_reused
    emptied = []
    original = generator.prefixes.clear
    generator.prefixes.clear = lambda: (emptied.append(len(generator.prefixes)), original())
    rows = rows_for(tokenizer, prompts[:8], max_new_tokens=4)
    scheduler.run(rows)
    assert emptied == [1] and not generator.last_prefix_reused
    assert_like_generate(model, tokenizer, rows)


def test_a_reused_prefix_feeds_the_static_decoder_too(loaded):
    """On a GPU, generation decodes over a static cache loaded from the expanded prefix cache."""
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = static_generator(model, tokenizer)
    first = rows_for(tokenizer, FEW_SHOT_PROMPTS[:2], max_new_tokens=6)
    generator.generate(first)
    later = rows_for(tokenizer, FEW_SHOT_PROMPTS[1:], max_new_tokens=6)
    generator.generate(later)
    assert generator.last_prefix_reused and generator.static.buffers is not None
    assert_like_generate(model, tokenizer, first + later)


def test_cache_tensors_pairs_keys_and_values_by_layer_in_the_older_layout_too():
    from evaluation.engine.server.kv_cache import cache_tensors

    entry = _Entry(2)
    entry.key_cache = [torch.full((1,), 1.0), torch.full((1,), 2.0)]
    entry.value_cache = [torch.full((1,), 10.0), torch.full((1,), 20.0)]
    assert [(k.item(), v.item()) for k, v in cache_tensors(entry)] == [(1.0, 10.0), (2.0, 20.0)]


@pytest.mark.parametrize("inference", [False, True])
def test_a_stacked_cache_gives_back_its_two_tensors_and_other_caches_none(inference):
    """kv_cache.stacked_cache: a replay's fill, every layer a view of one [layers, kv_heads, length, dim]
    tensor, found again by address (under inference mode views do not record their base)."""
    from evaluation.engine.server.kv_cache import cache_tensors, empty_cache, stacked, stacked_cache

    with torch.inference_mode(inference):
        keys, values = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
        cache = stacked_cache(keys, values)
        pairs = cache_tensors(cache)
        assert cache.get_seq_length() == 5 and [k.shape for k, _ in pairs] == [(1, 2, 5, 4)] * 3
        found = stacked(pairs)
        assert found is not None and all(
            a.data_ptr() == b.data_ptr() for a, b in zip(found, (keys, values), strict=True)
        )
        assert torch.equal(found[0], keys) and torch.equal(found[1], values)
        # Copies of each layer (what `expanded` and a model call make), a layer out of order, or one
        # that is not a single row: not stacked.
        assert stacked(cache_tensors(expanded(cache, 1))) is None
        assert stacked([pairs[1], pairs[0], pairs[2]]) is None
        assert stacked([(keys[None, 0], values[None, 0]), (keys[None, 2], values[None, 2])]) is None
        assert stacked([(keys[:2], values[:2])]) is None and stacked([]) is None
        # Each a copy of one empty cache's structure, which stays empty.
        other = stacked_cache(keys + 1, values + 1)
        assert cache_tensors(other)[0][0].data_ptr() != pairs[0][0].data_ptr()
        assert torch.equal(cache_tensors(cache)[2][1][0], values[2])
        assert empty_cache(3, keys.dtype, keys.device).get_seq_length() == 0


def test_a_prefix_goes_into_the_static_buffers_alike_in_one_copy_or_layer_by_layer():
    """generation._copy_prefix: a stacked prefix is copied into every layer at once; a model call's,
    layer by layer; the buffers end up the same."""
    from types import SimpleNamespace

    from evaluation.engine.server.generation import _copy_prefix
    from evaluation.engine.server.kv_cache import cache_tensors, stacked_cache

    keys, values = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    stacked_pairs = cache_tensors(stacked_cache(keys, values))
    own_pairs = [(k.clone(), v.clone()) for k, v in stacked_pairs]

    def buffers():
        big = [torch.zeros(3, 6, 2, 9, 4) for _ in range(2)]
        return SimpleNamespace(stacked=big, keys=list(big[0].unbind(0)), values=list(big[1].unbind(0)))

    one, by_layer = buffers(), buffers()
    _copy_prefix(stacked_pairs, one, 1, 4, 2, 7)
    _copy_prefix(own_pairs, by_layer, 1, 4, 2, 7)
    for a, b, source in zip(one.stacked, by_layer.stacked, (keys, values), strict=True):
        assert torch.equal(a, b) and torch.equal(a[:, 1:4, :, 2:7], source[:, None].expand(-1, 3, -1, -1, -1))
        assert a[:, [0, 4, 5]].abs().sum() == 0 and a[..., [0, 1, 7, 8], :].abs().sum() == 0
