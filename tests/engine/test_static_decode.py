"""The static-cache decode path (CUDA graphs on a GPU, the same step run eagerly here) agrees with
one-at-a-time `generate`: fp32 greedy tokens equal, logprobs within 1e-4."""

from __future__ import annotations

import pytest
import torch

from evaluation.engine.server import static_decode
from evaluation.engine.server.generation import BatchGenerator, Row
from tests.engine.reference import FEW_SHOT_PROMPTS, PROMPTS, assert_close, assert_like_generate, rows_for


def test_static_path_is_chosen_only_where_asked_and_supported(llama, tiny_gpt2_dir):
    from evaluation.engine.loading import load_model

    assert static_decode.supports(llama.model)
    assert BatchGenerator(llama.model, llama.tokenizer).static is None  # auto on a CPU: dynamic
    assert BatchGenerator(llama.model, llama.tokenizer, decode="static").static is not None
    gpt2 = load_model(tiny_gpt2_dir, device="cpu", dtype="float32")
    assert BatchGenerator(gpt2.model, gpt2.tokenizer, decode="static").static is None
    with pytest.raises(ValueError):
        BatchGenerator(llama.model, llama.tokenizer, decode="fast")


def test_mixed_lengths_and_bucket_padding_equal_sequential_generate(llama):
    model, tokenizer = llama.model, llama.tokenizer
    # Six rows: the bucket holds eight, so two padding rows ride along and must change nothing.
    rows = rows_for(tokenizer, PROMPTS, max_new_tokens=12)
    generator = BatchGenerator(model, tokenizer, decode="static")
    generator.generate(rows)
    assert len({len(r.prompt_ids) for r in rows}) > 3
    assert generator.static.buffers.rows == 8
    assert generator.last_decode_steps >= 11
    assert_like_generate(model, tokenizer, rows)


def test_shared_prefix_then_static_decode(llama):
    model, tokenizer = llama.model, llama.tokenizer
    rows = rows_for(tokenizer, FEW_SHOT_PROMPTS, max_new_tokens=8)
    generator = BatchGenerator(model, tokenizer, decode="static")
    generator.generate(rows)
    assert generator.last_shared_prefix >= 16
    assert_like_generate(model, tokenizer, rows)


def test_rows_of_different_lengths_to_generate_and_buffer_reuse(llama):
    model, tokenizer = llama.model, llama.tokenizer
    generator = BatchGenerator(model, tokenizer, decode="static")
    first = rows_for(tokenizer, PROMPTS[:3], max_new_tokens=3) + rows_for(tokenizer, PROMPTS[3:5], max_new_tokens=9)
    generator.generate(first)
    buffers = generator.static.buffers
    assert [len(r.tokens) for r in first if r.finish_reason == "length"] == [
        r.max_new_tokens for r in first if r.finish_reason == "length"
    ]
    # Same shape again: the buffers (and on a GPU the captured graph) are reused, freshly loaded.
    second = rows_for(tokenizer, PROMPTS[1:4] + PROMPTS[:2], max_new_tokens=5)
    generator.generate(second)
    assert generator.static.buffers is buffers
    assert_like_generate(model, tokenizer, first + second)


def test_static_and_dynamic_paths_give_the_same_logprobs(llama):
    model, tokenizer = llama.model, llama.tokenizer
    static_rows = rows_for(tokenizer, PROMPTS, max_new_tokens=10)
    dynamic_rows = rows_for(tokenizer, PROMPTS, max_new_tokens=10)
    BatchGenerator(model, tokenizer, decode="static").generate(static_rows)
    BatchGenerator(model, tokenizer, decode="dynamic").generate(dynamic_rows)
    for s, d in zip(static_rows, dynamic_rows, strict=True):
        assert s.tokens == d.tokens
        assert_close(s.logprobs, d.logprobs, tol=1e-5)


def test_sampled_rows_use_their_own_generators_on_the_static_path(llama):
    model, tokenizer = llama.model, llama.tokenizer

    def sampled() -> list[Row]:
        rows = rows_for(tokenizer, PROMPTS[:4], max_new_tokens=6, temperature=0.9)
        for i, row in enumerate(rows):
            row.seed = 100 + i
            row.generator = torch.Generator().manual_seed(row.seed)
        return rows

    static_rows, dynamic_rows = sampled(), sampled()
    BatchGenerator(model, tokenizer, decode="static").generate(static_rows)
    BatchGenerator(model, tokenizer, decode="dynamic").generate(dynamic_rows)
    assert [r.tokens for r in static_rows] == [r.tokens for r in dynamic_rows]
    assert any(r.tokens for r in static_rows)


def test_row_buckets():
    assert [static_decode.row_bucket(n) for n in (1, 3, 8, 9, 33, 250, 300)] == [1, 4, 8, 16, 48, 256, 300]


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """A grouped-query Llama (8 query heads, 2 key/value heads), as most current models are."""
    from evaluation.engine.loading import load_model
    from evaluation.engine.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-gqa"), "llama", seed=1, num_heads=8, num_kv_heads=2)
    return load_model(folder, device="cpu", dtype="float32")


@pytest.mark.parametrize("prompts", [PROMPTS, FEW_SHOT_PROMPTS], ids=["mixed-lengths", "shared-prefix"])
def test_grouped_query_forwards_never_copy_keys_per_query_head_and_equal_sequential_generate(
    grouped, monkeypatch, prompts
):
    """Hugging Face's SDPA with a mask copies keys and values per query head (`repeat_kv`) in every
    layer of every forward; the engine's prefill and steps must not, and must still give generate's
    tokens and logprobs."""
    from transformers.integrations import sdpa_attention

    model, tokenizer = grouped.model, grouped.tokenizer
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    copies = []
    repeat_kv = sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda t, n: copies.append(n) or repeat_kv(t, n))
    rows = rows_for(tokenizer, prompts, max_new_tokens=12)
    generator = BatchGenerator(model, tokenizer, decode="static")
    generator.generate(rows)
    assert generator.last_decode_steps >= 11 and copies == []
    assert model.config._attn_implementation == "sdpa"  # restored after the batch
    monkeypatch.undo()
    assert_like_generate(model, tokenizer, rows)


def test_grouped_query_static_and_dynamic_paths_agree(grouped):
    model, tokenizer = grouped.model, grouped.tokenizer
    static_rows = rows_for(tokenizer, FEW_SHOT_PROMPTS + PROMPTS, max_new_tokens=8)
    dynamic_rows = rows_for(tokenizer, FEW_SHOT_PROMPTS + PROMPTS, max_new_tokens=8)
    BatchGenerator(model, tokenizer, decode="static").generate(static_rows)
    BatchGenerator(model, tokenizer, decode="dynamic").generate(dynamic_rows)
    for s, d in zip(static_rows, dynamic_rows, strict=True):
        assert s.tokens == d.tokens
        assert_close(s.logprobs, d.logprobs, tol=1e-5)


def test_a_model_attending_eagerly_decodes_as_generate(tiny_llama_dir):
    """Eager attention adds the mask to the scores: the static decoder's mask must be additive."""
    from evaluation.engine.loading import load_model

    loaded = load_model(tiny_llama_dir, device="cpu", dtype="float32")
    loaded.model.config._attn_implementation = "eager"
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = rows_for(tokenizer, PROMPTS, max_new_tokens=8)
    generator = BatchGenerator(model, tokenizer, decode="static")
    assert generator.static is not None
    generator.generate(rows)
    assert_like_generate(model, tokenizer, rows)


def test_the_standing_shape_takes_half_the_room_in_whole_column_steps():
    columns = static_decode.standing_columns
    # A 1.1 B model under 24 GB: 162,853 cache tokens of room, 2,048 positions.
    assert columns(162_853, 2048, graphs=True) == 1152
    assert columns(10**7, 2048, graphs=True) == 2048  # never past the model's positions
    assert columns(10**7, 2000, graphs=True) == 2048  # ... rounded up to a whole step, as any shape
    assert columns(8_000, 4096, graphs=True) == 0  # a 6.7 B model's room: too narrow to serve
    assert columns(162_853, 2048, graphs=False) == 0  # auto: only where steps run as graphs
    assert columns(162_853, 2048, graphs=False, setting="1") == 1152
    assert columns(162_853, 2048, graphs=True, setting="0") == 0


def _standing(llama, room_tokens: int) -> BatchGenerator:
    generator = BatchGenerator(llama.model, llama.tokenizer, decode="static")
    generator.static.prepare(standing_columns=256, room_tokens=room_tokens)
    assert (generator.static.standing.rows, generator.static.standing.columns) == (64, 256)
    return generator


def test_a_wide_batch_steps_in_the_standing_shape_and_a_narrow_one_beside_it(llama):
    model, tokenizer = llama.model, llama.tokenizer
    generator = _standing(llama, room_tokens=64 * 256 + 8 * 128)
    standing = generator.static.standing
    wide = rows_for(tokenizer, (PROMPTS * 6)[:33], max_new_tokens=4)  # bucket 48: in the standing shape
    generator.generate(wide)
    assert generator.static.buffers is standing
    narrow = rows_for(tokenizer, PROMPTS, max_new_tokens=4)  # bucket 8: its attention splits its own way
    generator.generate(narrow)
    assert generator.static.buffers is not standing and generator.static.buffers.rows == 8
    assert generator.static.standing is standing  # both fit the room
    generator.generate(wide[:25])  # the standing shape again, refilled: nothing of the wide batch left
    assert generator.static.buffers is standing
    assert_like_generate(model, tokenizer, wide[:7] + narrow + wide[25:27])
    generator.release_memory()
    assert generator.static.standing is None and generator.static.buffers is None


def test_the_standing_shape_goes_when_another_shape_would_not_fit_beside_it(llama):
    generator = _standing(llama, room_tokens=64 * 256)
    rows = rows_for(llama.tokenizer, PROMPTS, max_new_tokens=3)
    generator.generate(rows)
    assert generator.static.standing is None and generator.static.buffers.rows == 8
    assert_like_generate(llama.model, llama.tokenizer, rows)


def test_a_batch_longer_than_the_standing_shape_gets_its_own(llama):
    generator = _standing(llama, room_tokens=10**6)
    rows = rows_for(llama.tokenizer, (PROMPTS * 6)[:33], max_new_tokens=2)
    rows[0].max_new_tokens = 250  # its prompt and new tokens: past 256 columns
    generator.generate(rows)
    assert generator.static.buffers is not generator.static.standing
    assert generator.static.buffers.columns > 256 and generator.static.standing is not None


@pytest.mark.parametrize("room", [64 * 256, 10**6])
def test_rows_joining_past_the_standing_shape_move_the_batch_out_of_it(llama, room):
    from tests.engine.test_joining import Arrivals

    model, tokenizer = llama.model, llama.tokenizer
    generator = _standing(llama, room_tokens=room)
    first = rows_for(tokenizer, (PROMPTS * 6)[:30], max_new_tokens=6)
    later = rows_for(tokenizer, PROMPTS[:2], max_new_tokens=240)  # past 256 columns
    generator.generate(first, Arrivals({2: later}))
    assert generator.last_joined and generator.static.buffers.columns > 256
    # The standing shape stays only while both fit the room.
    assert (generator.static.standing is not None) == (room > 64 * 256)
    assert_like_generate(model, tokenizer, first[:3] + later)


def test_the_servers_warm_up_makes_the_standing_shape_from_its_limits(llama, monkeypatch):
    from evaluation.engine.server.app import ModelService
    from evaluation.engine.server.batching import Limits

    monkeypatch.setenv("ENGINE_DECODE_STANDING", "1")  # auto: only where steps run as graphs (a GPU)
    service = ModelService(llama, Limits(max_batch_size=64, max_batch_tokens=2 * 64 * 300), decode="static")
    service.warm_up()
    decode = service.stats_snapshot()["decode"]
    assert decode["standing"] == [64, 256] and decode["graph_captures"] == 0
    rows = rows_for(llama.tokenizer, (PROMPTS * 6)[:30], max_new_tokens=3)
    service.scheduler.run(rows)
    assert service.generator.static.buffers is service.generator.static.standing
    assert_like_generate(llama.model, llama.tokenizer, rows[:6])
