"""Packed single-token batches in chunks of fixed shapes (packed_graphs.py). On the CPU the same shapes,
padding and prefix buffers run without graphs (ENGINE_PACKED_GRAPHS=1): results equal `generate`'s
and the plain packed forward's; batches it does not take run the plain packed forward."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from evaluation.engine.server import packed_graphs
from evaluation.engine.server.generation import BatchGenerator
from evaluation.engine.server.packed_graphs import Shape, chunks_for, layout
from tests.engine.reference import STORE_BYTES, assert_like_generate, rows_for
from tests.engine.test_packed import later_layers_skipping_packed_attention, tiny_llama
from tests.engine.test_prefix_batches import run_prompts


@pytest.fixture(scope="module", params=["mha", "gqa"])
def loaded(request, tmp_path_factory):
    return tiny_llama(request, tmp_path_factory, seed=5)


@pytest.fixture
def graphs_on(monkeypatch):
    monkeypatch.setenv("ENGINE_PACKED_GRAPHS", "1")


def _check_chunks(lengths, low=packed_graphs.MIN_LONGEST):
    chunks = chunks_for(lengths, low)
    assert chunks[0].first == 0 and chunks[-1].end == len(lengths)
    for chunk, after in itertools.pairwise(chunks):
        assert chunk.end == after.first and chunk.end > chunk.first  # every row once, in order
    for chunk in chunks:
        rows = lengths[chunk.first : chunk.end]
        padding = chunk.shape.tokens - sum(rows)
        assert chunk.shape.tokens in packed_graphs.CHUNKS and padding >= 0
        assert max(rows) <= chunk.shape.longest and chunk.shape.longest >= low
        assert len(rows) + -(-padding // chunk.shape.longest) <= chunk.shape.rows
    return chunks


def test_batches_are_cut_into_chunks_of_whole_rows_with_little_padding():
    assert [c.shape.tokens for c in _check_chunks([70] * 29)] == [2048]  # 2,030 tokens
    assert [c.shape.tokens for c in _check_chunks([70] * 20)] == [1024, 512]  # 1,400 tokens: not 2,048
    assert [c.shape.tokens for c in _check_chunks([90] * 100)] == [8192, 1024]
    assert [c.shape.tokens for c in _check_chunks([3])] == [256]
    for seed in range(40):
        rng = random.Random(seed)
        lengths = [rng.choice([1, 5, 30, 70, 120, 300, 900]) for _ in range(rng.randint(1, 200))]
        chunks = _check_chunks(lengths)
        padding = sum(c.shape.tokens for c in chunks) - sum(lengths)
        # The last chunk's padding (under 256, or under a quarter of it) and under a row's at each cut.
        assert padding <= max(256, sum(lengths) // 4) + 900 * (len(chunks) - 1)


def test_a_decoding_prefills_short_rows_take_shapes_of_a_short_longest_row():
    """The own-token kernel's grid is longest / 128 blocks a row and head: a decoding batch's rows (what
    follows their prefix, a few dozen tokens) take shapes of KV_MIN_LONGEST, a multiple-choice batch's of
    MIN_LONGEST; a longer row a longer shape, and the padding still fits the shape's rows."""
    low = packed_graphs.KV_MIN_LONGEST
    (chunk,) = _check_chunks([40] * 50, low)
    assert chunk.shape == Shape(tokens=2048, rows=128, longest=low)
    assert _check_chunks([40] * 50)[0].shape.longest == packed_graphs.MIN_LONGEST
    assert _check_chunks([300] + [40] * 40, low)[0].shape.longest == 512
    for seed in range(40):
        rng = random.Random(seed)
        _check_chunks([rng.choice([1, 5, 30, 70, 120, 300]) for _ in range(rng.randint(1, 300))], low)
    graphs = packed_graphs.PackedGraphs.__new__(packed_graphs.PackedGraphs)
    graphs.failed = False
    assert graphs.chunks([40] * 50, 2, True)[0].shape.longest == low
    assert graphs.chunks([40] * 50, 2, False)[0].shape.longest == packed_graphs.MIN_LONGEST


def test_many_short_rows_end_a_chunk_by_its_row_count_and_long_rows_get_their_own_shape():
    chunks = _check_chunks([1] * 200)
    assert len(chunks) > 1 and chunks[0].shape.rows == 64
    (chunk,) = _check_chunks([600, 20])
    assert chunk.shape == Shape(tokens=1024, rows=64, longest=1024)
    assert chunks_for([9000]) is None and chunks_for([]) is None


def test_the_layout_covers_every_token_once_and_ends_with_a_group_without_prefix():
    lengths = [30, 90, 12, 40, 7]
    (chunk,) = chunks_for(lengths)
    shape = chunk.shape
    # Two groups (keys 50:100 and 100:170 of the buffers), then the row without a prefix and the padding.
    cuts = layout(shape, lengths, [120, 172], [50, 100, 170])
    groups = packed_graphs.GROUPS
    own = cuts[: shape.rows + 1]
    queries = cuts[shape.rows + 1 : shape.rows + groups + 2]
    keys = cuts[shape.rows + groups + 2 :]
    assert len(own) == shape.rows + 1 and len(queries) == len(keys) == groups + 1
    assert own[:6] == [0, 30, 120, 132, 172, 179] and own[-1] == shape.tokens and own == sorted(own)
    assert all(b - a <= shape.longest for a, b in itertools.pairwise(own))  # padding rows fit the kernel's bound
    assert queries[:4] == [0, 120, 172, shape.tokens] and set(queries[3:]) == {shape.tokens}
    assert keys[:3] == [50, 100, 170] and set(keys[2:]) == {170}


def test_enabled_by_setting_and_model(loaded, monkeypatch, tiny_gpt2_dir):
    from evaluation.engine.loading import load_model

    cpu = torch.device("cpu")
    monkeypatch.delenv("ENGINE_PACKED_GRAPHS", raising=False)
    assert not packed_graphs.enabled(loaded.model, cpu)  # auto: a GPU in half precision only
    monkeypatch.setenv("ENGINE_PACKED_GRAPHS", "1")
    assert packed_graphs.enabled(loaded.model, cpu)
    assert not packed_graphs.enabled(load_model(tiny_gpt2_dir, device="cpu", dtype="float32").model, cpu)
    monkeypatch.setenv("ENGINE_PACKED_GRAPHS", "0")
    assert not packed_graphs.enabled(loaded.model, cpu)


def _mixed_prompts() -> list[str]:
    return [p for trio in zip(run_prompts(0, 4), run_prompts(1, 4), run_prompts(2, 4, 95), strict=True) for p in trio]


def test_chunked_batches_equal_generate_and_the_plain_packed_forward(loaded, graphs_on):
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    plain = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    plain.graphs = None  # the plain packed forward
    assert generator.graphs is not None
    # Later batches from the stored prefixes (rows without one: test_rows_without_a_prefix_...).
    batches = [_mixed_prompts(), run_prompts(2, 3, 95) + run_prompts(0, 2, 4), run_prompts(1, 5, 4)]
    for number, prompts in enumerate(batches, start=1):
        rows = rows_for(tokenizer, prompts, max_new_tokens=1)
        generator.generate(rows)
        assert generator.last_packed and generator.graphs.served == number
        assert_like_generate(model, tokenizer, rows)
        again = rows_for(tokenizer, prompts, max_new_tokens=1)
        plain.generate(again)
        for row, other in zip(rows, again, strict=True):
            assert row.tokens == other.tokens and abs(row.logprobs[0] - other.logprobs[0]) < 1e-5
    # A few chunk shapes, the prefixes of the last batch in the buffers.
    assert 1 <= len(generator.graphs.graphs) <= 3 and len(generator.graphs._loaded) == 1


def test_each_layers_buffer_holds_each_prefixs_keys_and_values_one_after_another(loaded, graphs_on):
    from evaluation.engine.server.kv_cache import cache_tensors

    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    # Batches whose prefix sets alternate, as batches of several runs' rows do: each loads its own.
    for prompts in (_mixed_prompts(), run_prompts(1, 3, 20), _mixed_prompts()[::-1]):
        rows = rows_for(tokenizer, prompts, max_new_tokens=1)
        generator.generate(rows)
        assert generator.last_packed
        assert_like_generate(model, tokenizer, rows)
    graphs = generator.graphs
    stored = {id(cache_tensors(cache)[0][0]): cache for cache, _ in generator.prefixes._entries.values()}
    start = 0
    assert len(graphs._loaded) == 3
    for first in graphs._loaded:
        tensors = cache_tensors(stored[id(first)])
        n = tensors[0][0].shape[-2]
        for layer, (k, v) in enumerate(tensors):
            assert torch.equal(graphs.prefix_keys[layer][start : start + n], k[0].transpose(0, 1))
            assert torch.equal(graphs.prefix_values[layer][start : start + n], v[0].transpose(0, 1))
        start += n


def test_rows_without_a_prefix_attend_only_to_themselves(loaded, graphs_on):
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    generator.generate(rows_for(tokenizer, run_prompts(0, 4), max_new_tokens=1))  # stores the run's prefix
    loners = ["The doctor and the nurse talked about his patients.", "A"]
    rows = rows_for(tokenizer, [*run_prompts(0, 3, 4), *loners], max_new_tokens=1)
    generator.generate(rows)
    assert generator.last_packed and generator.graphs.served == 2
    assert_like_generate(model, tokenizer, rows)
    # No stored prefix at all: the plain packed forward.
    rows = rows_for(tokenizer, loners, max_new_tokens=1)
    generator.generate(rows)
    assert generator.last_packed and generator.graphs.served == 2
    assert_like_generate(model, tokenizer, rows)


def test_layers_that_skip_packed_attention_turn_the_graphs_off(loaded, graphs_on):
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    rows = rows_for(tokenizer, run_prompts(0, 3), max_new_tokens=1)
    with later_layers_skipping_packed_attention():
        generator.generate(rows)
    assert generator.graphs.failed and generator.graphs.served == 0
    assert_like_generate(model, tokenizer, rows)


def test_larger_prefixes_get_new_buffers_and_release_drops_everything(loaded, graphs_on):
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    generator.generate(rows_for(tokenizer, run_prompts(0, 4), max_new_tokens=1))
    first = generator.graphs.capacity
    rows = rows_for(tokenizer, _mixed_prompts(), max_new_tokens=1)
    generator.generate(rows)  # three prefixes: more than twice the first one's room
    assert generator.graphs.capacity > first and generator.graphs.served == 2
    assert_like_generate(model, tokenizer, rows)
    generator.release_memory()
    assert not generator.graphs.graphs and generator.graphs.capacity == 0


def test_with_fused_layers_the_residual_sums_deferred_to_the_next_norm_give_the_same_results(
    tmp_path, graphs_on, monkeypatch
):
    from evaluation.engine.loading import load_model
    from evaluation.engine.server import fused
    from evaluation.engine.tiny import build_tiny_model

    monkeypatch.setenv("ENGINE_FUSED", "1")
    loaded = load_model(build_tiny_model(tmp_path, "llama", seed=6, num_kv_heads=2), device="cpu", dtype="float32")
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    assert generator.fused and generator.graphs is not None
    parts = []
    layer_parts = fused.layer_parts
    # The layer before's MLP output handed on (`pending`): only the bucketed forward does that here.
    monkeypatch.setattr(fused, "layer_parts", lambda *a, **k: parts.append(a[2] is not None) or layer_parts(*a, **k))
    rows = rows_for(tokenizer, _mixed_prompts(), max_new_tokens=1)
    forward = generator.graphs._forward
    calls = []
    monkeypatch.setattr(generator.graphs, "_forward", lambda g: calls.append(g.shape) or forward(g))
    generator.generate(rows)
    # The prefixes' fills (PackedGraphs.prefix_caches) and the batch's forward run the same layers.
    forwards = len(calls)
    assert generator.last_prefix_fills[0] == 3 and forwards > 1 and all(c.kv for c in calls[:-1])
    assert len(parts) == forwards * model.config.num_hidden_layers
    assert generator.graphs.served == 1 and sum(parts) == forwards * (model.config.num_hidden_layers - 1)
    assert_like_generate(model, tokenizer, rows)


def test_stats_count_the_batches_run_in_chunks(loaded, graphs_on):
    from evaluation.engine.server.app import ModelService
    from evaluation.engine.server.batching import Limits

    model, tokenizer = loaded.model, loaded.tokenizer
    service = ModelService(loaded, Limits(prefix_store_bytes=STORE_BYTES))
    rows = rows_for(tokenizer, _mixed_prompts(), max_new_tokens=1)
    service.scheduler.run(rows)
    snapshot = service.stats_snapshot()
    assert (
        snapshot["packed_graph_batches"] == service.generator.graphs.served >= 1
        and snapshot["packed_graph_captures"] == 0
    )  # no GPU
    assert_like_generate(model, tokenizer, rows)


def test_a_batch_over_several_chunks_cut_inside_its_groups_equals_generate(loaded, graphs_on, monkeypatch):
    """Chunks small enough that the tiny model's batch needs several, cut inside prefix groups."""
    monkeypatch.setattr(packed_graphs, "CHUNKS", (16, 32, 64))
    monkeypatch.setattr(packed_graphs, "MIN_LONGEST", 16)
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    generator.generate(rows_for(tokenizer, _mixed_prompts(), max_new_tokens=1))  # stores three prefixes
    cut = []
    chunks_for = packed_graphs.chunks_for
    monkeypatch.setattr(packed_graphs, "chunks_for", lambda *a: cut.append(chunks_for(*a)) or cut[-1])
    loners = ["The doctor and the nurse talked about his patients.", "A"]
    prompts = [*loners, *run_prompts(2, 4, 95), *run_prompts(0, 5, 4), *run_prompts(1, 5, 4)]
    rows = rows_for(tokenizer, prompts, max_new_tokens=1)
    generator.generate(rows)
    assert generator.graphs.served == 2 and len(cut[-1]) >= 2
    assert_like_generate(model, tokenizer, rows)


class _ReplayedForward:
    """A stand-in for a CUDA graph on the CPU: replays the forward into the captured output's tensor."""

    def __init__(self, forward, out):
        self.forward, self.out, self.replays = forward, out, 0

    def replay(self):
        self.replays += 1
        self.out.copy_(self.forward())


def _stand_in_capture(graphs):
    """Capturer._capture without a GPU: runs the forward once, and again at each replay."""

    def capture(forward, warm_ups):
        out = forward()
        graphs.capturer.captures += 1
        return _ReplayedForward(forward, out), out

    return capture


def test_graphs_prepared_at_warm_up_serve_the_batches_without_more_captures(loaded, graphs_on, monkeypatch):
    from evaluation.engine.server.app import ModelService
    from evaluation.engine.server.batching import Limits

    model, tokenizer = loaded.model, loaded.tokenizer
    service = ModelService(loaded, Limits(prefix_store_bytes=STORE_BYTES))
    graphs = service.generator.graphs
    graphs.use_graphs = True
    monkeypatch.setattr(graphs.capturer, "_capture", _stand_in_capture(graphs))
    service.warm_up()
    assert graphs.prepared == graphs.captures == len(packed_graphs.CHUNKS) + len(packed_graphs.FILL_SIZES)
    # Each replayed once at warm-up: a graph's first replay uploads it, which no batch should wait for.
    assert [g.graph.replays for g in graphs.graphs.values()] == [1] * graphs.prepared
    assert graphs.capacity == packed_graphs.PREPARED_CAPACITY
    rows = rows_for(tokenizer, _mixed_prompts(), max_new_tokens=1)
    service.scheduler.run(rows)
    snapshot = service.stats_snapshot()
    assert snapshot["packed_graph_batches"] >= 1 and snapshot["packed_graph_captures"] == 0
    assert graphs.captures == graphs.prepared
    assert_like_generate(model, tokenizer, rows)


def test_the_warm_up_captures_the_forward_the_batches_run_fused_layers_included(tmp_path, graphs_on, monkeypatch):
    """The graphs captured at warm-up ran Hugging Face's unfused layers (outside the generator's fused
    context): every later replay then computed unfused (session 11, a profile on the GPU)."""
    from evaluation.engine.loading import load_model
    from evaluation.engine.server import fused
    from evaluation.engine.server.app import ModelService
    from evaluation.engine.server.batching import Limits
    from evaluation.engine.tiny import build_tiny_model

    monkeypatch.setenv("ENGINE_FUSED", "1")
    loaded = load_model(build_tiny_model(tmp_path, "llama", seed=7), device="cpu", dtype="float32")
    service = ModelService(loaded, Limits(prefix_store_bytes=STORE_BYTES))
    graphs = service.generator.graphs
    graphs.use_graphs = True
    fused_when_captured = []

    stand_in = _stand_in_capture(graphs)

    def capture(forward, warm_ups):
        fused_when_captured.append(fused.runs_fused(loaded.model))
        return stand_in(forward, warm_ups)

    monkeypatch.setattr(graphs.capturer, "_capture", capture)
    service.warm_up()
    assert fused_when_captured == [True] * (len(packed_graphs.CHUNKS) + len(packed_graphs.FILL_SIZES))


def test_only_the_first_capture_and_a_retry_run_warm_up_forwards(monkeypatch):
    from evaluation.engine.server.cuda_graphs import Capturer

    capturer = Capturer(shared_pool=True)
    calls, fail_without_warm_up = [], [False]

    def capture(forward, warm_ups):
        calls.append(warm_ups)
        if fail_without_warm_up[0] and not warm_ups:
            raise RuntimeError("operation not permitted when stream is capturing")
        capturer.captures += 1
        return "graph", forward()

    monkeypatch.setattr(capturer, "_capture", capture)
    assert capturer.capture(lambda: 1, warm_ups=2) == ("graph", 1) and calls == [2]
    assert capturer.capture(lambda: 2, warm_ups=2) == ("graph", 2) and calls == [2, 0]
    fail_without_warm_up[0] = True  # a shape that needs its warm-up: retried with it
    assert capturer.capture(lambda: 3, warm_ups=2) == ("graph", 3) and calls == [2, 0, 0, 2]

    def never(forward, warm_ups):
        raise RuntimeError("no graphs here")

    monkeypatch.setattr(capturer, "_capture", never)
    assert capturer.capture(lambda: 4) is None  # the caller runs without graphs

    def out_of_memory(forward, warm_ups):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(capturer, "_capture", out_of_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        capturer.capture(lambda: 5)


def test_the_host_benchmark_times_packed_batches_through_the_graphs(capsys):
    """benchmarks/packed_host.py: every timed batch went through the packed graphs (their replay faked),
    and the launch is part of each batch's time."""
    import json

    from benchmarks import packed_host

    packed_host.main(["--rows", "12", "--batches", "4", "--prefix", "600"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["packed_by_graphs"] == 3 + 4  # the three that store the prefixes, then the timed ones
    assert 0 < result["launch_ms_a_batch"] < result["ms_a_batch"]


def test_prefixes_filled_by_one_replay_keep_the_keys_and_values_a_model_call_gives(loaded, graphs_on, monkeypatch):
    """Two prefixes side by side in one replay: each one's cache is what its own model call gives, its
    layers views of one [layers, kv_heads, length, dim] tensor for keys and one for values."""
    from evaluation.engine.server.kv_cache import cache_tensors, stacked

    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    prefixes = [tokenizer(run_prompts(run, 1)[0])["input_ids"][:n] for run, n in ((0, 40), (1, 23))]
    graphs = generator.graphs
    forward = graphs._forward
    calls = []
    outputs = []
    monkeypatch.setattr(
        graphs, "_forward", lambda g: calls.append(g.shape) or outputs.append(forward(g)) or outputs[-1]
    )
    with generator._running():
        caches = graphs.prefix_caches(prefixes)
        references = [model(input_ids=torch.tensor([t]), use_cache=True).past_key_values for t in prefixes]
    assert len(calls) == 1 and calls[0].kv  # one replay, of a shape that keeps what it computed
    # A fill's shape attends to no prefix and computes no logits (one position's hidden state instead).
    assert calls[0].fill and graphs.graphs[calls[0]].plan.prefix_keys == []
    assert outputs[0].shape == (1, model.config.hidden_size)
    layers = model.config.num_hidden_layers
    for tokens, cache, reference in zip(prefixes, caches, references, strict=True):
        assert cache.get_seq_length() == len(tokens)
        pairs = cache_tensors(cache)
        keys, values = stacked(pairs)
        assert keys.shape[:3] == (layers, pairs[0][0].shape[1], len(tokens)) and keys.is_contiguous()
        for (k, v), (rk, rv) in zip(pairs, cache_tensors(reference), strict=True):
            assert k.shape == rk.shape == (1, rk.shape[1], len(tokens), rk.shape[3]) and k.is_contiguous()
            torch.testing.assert_close(k, rk, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v, rv, atol=1e-5, rtol=1e-5)
        assert stacked(cache_tensors(reference)) is None  # a model call's layers are tensors of their own
    # More than JOINT_FILL tokens: a replay for each group of them, the prefixes in order, each replay a
    # fill shape the warm-up captures.
    more = [[5 + i] * n for i, n in enumerate((700, 300, 150, 30, 40))]
    with generator._running():
        caches = graphs.prefix_caches(more)
        reference = model(input_ids=torch.tensor([more[1]]), use_cache=True).past_key_values
        assert graphs.prefix_caches([]) is None and graphs.prefix_caches([[5], []]) is None
    assert [c.get_seq_length() for c in caches] == [700, 300, 150, 30, 40]
    fill_shapes = {packed_graphs._fill_shape(n) for n in packed_graphs.FILL_SIZES}
    assert len(calls) == 4 and set(calls[1:]) <= fill_shapes  # 700; 300, 150 and 30; 40
    torch.testing.assert_close(cache_tensors(caches[1])[-1][1], cache_tensors(reference)[-1][1], atol=1e-5, rtol=1e-5)


def test_new_prefixes_are_filled_by_replays_unless_turned_off(loaded, graphs_on, monkeypatch):
    model, tokenizer = loaded.model, loaded.tokenizer
    fills = []  # each call: how many prefixes, whether it filled them (else None: model calls then)
    real = packed_graphs.PackedGraphs.prefix_caches
    monkeypatch.setattr(packed_graphs.PackedGraphs, "prefix_caches",
                        lambda self, prefixes: fills.append((len(prefixes), real(self, prefixes))) or fills[-1][1])  # fmt: skip
    for on in (True, False):
        monkeypatch.setattr(packed_graphs, "fill_prefixes", on)
        fills.clear()
        generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
        rows = rows_for(tokenizer, _mixed_prompts(), max_new_tokens=1)
        generator.generate(rows)
        assert generator.last_packed and generator.last_prefix_fills[0] == 3
        # One call for the three; off, it answers None and each prefix is a model call of its own.
        assert [(count, caches is not None) for count, caches in fills] == [(3, on)]
        assert_like_generate(model, tokenizer, rows)
    assert (
        packed_graphs.PackedGraphs(model, use_graphs=False).prefix_caches([[1] * (packed_graphs.CHUNKS[-1] + 1)])
        is None
    )


def test_a_decoding_batch_shares_a_new_prefix_that_a_replay_fills_for_less_than_a_forward(
    loaded, graphs_on, monkeypatch
):
    """A GPU's rule (`decode_prefix_saving`, a forward's worth of tokens) kept a generation suite's
    one-shot prefix unshared; where a packed-graph replay fills it, the replay's padded tokens and its
    launch are the bar. Off (ENGINE_GRAPH_PREFIX_FILLS=0), the forward's bar stays."""
    model, tokenizer = loaded.model, loaded.tokenizer
    for fills in (True, False):
        monkeypatch.setattr(packed_graphs, "fill_prefixes", fills)
        generator = BatchGenerator(model, tokenizer, decode="static", prefix_store_bytes=STORE_BYTES)
        rows = rows_for(tokenizer, run_prompts(1, 12), max_new_tokens=3)
        shared = len(rows[0].prompt_ids) - 12  # at least: the instructions and the run's example
        generator.decode_prefix_saving = 12 * shared  # more than the rows skip: a forward is not worth it
        generator.replay_worth = 1
        padded = generator.graphs.fill_tokens(shared)
        assert padded is None if not fills else padded < 11 * shared
        generator.generate(rows)
        assert (generator.last_shared_prefix >= shared) == fills, generator.last_shared_prefix
        assert_like_generate(model, tokenizer, rows)


def test_a_decoding_batch_the_replays_do_not_take_falls_back_before_filling_its_prefixes(
    loaded, graphs_on, monkeypatch
):
    """More runs' prefixes than the graphs hold (MAX_GROUPS): the forward's prefill runs, and the batch's
    prefix figures are that path's (the fills counted, the new prefixes not taken for stored ones)."""
    from evaluation.engine.server import generation

    monkeypatch.setattr(packed_graphs, "MAX_GROUPS", 1)
    model, tokenizer = loaded.model, loaded.tokenizer
    seen = {}
    for by_replays in (False, True):
        monkeypatch.setattr(generation, "graph_decode_prefill", by_replays)
        generator = BatchGenerator(model, tokenizer, decode="static", prefix_store_bytes=STORE_BYTES)
        generator.decode_prefix_saving = 0
        rows = rows_for(tokenizer, run_prompts(0, 3) + run_prompts(1, 3), max_new_tokens=3)
        generator.generate(rows)
        seen[by_replays] = (generator.last_prefix_fills[0], generator.last_prefix_reused, generator.last_skipped_tokens)
        assert_like_generate(model, tokenizer, rows)
    assert seen[True] == seen[False] and seen[False][0] == 2 and not seen[False][1], seen


@pytest.mark.parametrize("with_prefixes", [True, False])
def test_a_decoding_batchs_prefill_written_by_replays_decodes_as_generate(loaded, graphs_on, monkeypatch,
                                                                         with_prefixes):  # fmt: skip
    """ENGINE_GRAPH_DECODE_PREFILL: the replays write the keys and values into the static decoder's
    buffers as `_prefill`'s cache lays them out (each row's prefix ending at the longest prefix's end,
    its own tokens at the end, rows of no prefix among them), for stored prefixes and new ones."""
    from evaluation.engine.server import decode_attention, generation

    monkeypatch.setattr(generation, "graph_decode_prefill", True)
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, decode="static", prefix_store_bytes=STORE_BYTES)
    generator.decode_prefix_saving = 0  # a prefix of its own for these few rows (a GPU's rule skips it)
    written = []
    real = generator._graph_prefill
    monkeypatch.setattr(generator, "_graph_prefill", lambda groups: written.append(real(groups)) or written[-1])
    loners = ["The doctor and the nurse talked about his patients.", "A"]
    batches = (
        [_mixed_prompts()[:7] + loners, run_prompts(2, 3, 50) + run_prompts(0, 2, 9)] if with_prefixes else [loners]
    )
    # The decoder's start is queued before the first tokens are read (which waits for the prefill).
    order = []
    start, choose = generator.static.start, generator._choose
    monkeypatch.setattr(generator.static, "start", lambda *a: order.append("start") or start(*a))
    monkeypatch.setattr(generator, "_choose", lambda *a: order.append("choose") or choose(*a))
    for prompts in batches:
        order.clear()
        rows = rows_for(tokenizer, prompts, max_new_tokens=5)
        generator.generate(rows)
        assert written[-1] is not None and generator.last_decode_steps >= 4
        assert bool(generator.last_shared_prefix) == with_prefixes
        assert order[:2] == ["start", "choose"] and order.count("start") == 1
        # The bounds it was given, worked out on the host, are the mask's.
        _, _, mask, _, (bounds, fits) = written[-1]
        expected, expected_fits = decode_attention.row_bounds(mask)
        assert torch.equal(bounds, expected) and fits == expected_fits
        assert_like_generate(model, tokenizer, rows)


def test_with_decoding_prefills_by_replays_the_warm_up_captures_every_shape_they_take(loaded, graphs_on, monkeypatch):
    from evaluation.engine.server import generation
    from evaluation.engine.server.app import ModelService
    from evaluation.engine.server.batching import Limits

    monkeypatch.setattr(generation, "graph_decode_prefill", True)
    model, tokenizer = loaded.model, loaded.tokenizer
    service = ModelService(loaded, Limits(prefix_store_bytes=STORE_BYTES), decode="static")
    service.generator.decode_prefix_saving = 0
    graphs = service.generator.graphs
    graphs.use_graphs = True
    monkeypatch.setattr(graphs.capturer, "_capture", _stand_in_capture(graphs))
    service.warm_up()
    # Each chunk size plain and keeping its keys and values (its rows' own tokens up to KV_MIN_LONGEST
    # in each); the fill shapes.
    assert graphs.prepared == 2 * len(packed_graphs.CHUNKS) + len(packed_graphs.FILL_SIZES)
    kv_chunks = [s for s in graphs.graphs if s.kv and s.longest == packed_graphs.KV_MIN_LONGEST]
    assert sorted(s.tokens for s in kv_chunks) == sorted(packed_graphs.CHUNKS)
    rows = rows_for(tokenizer, _mixed_prompts(), max_new_tokens=3)
    service.scheduler.run(rows)
    assert service.stats_snapshot()["packed_graph_captures"] == 0 and graphs.captures == graphs.prepared
    # The prefixes' fills and the batch's prefill replayed shapes that keep their keys and values; the
    # prefill's own tokens in a shape of KV_MIN_LONGEST.
    assert sum(g.graph.replays - 1 for shape, g in graphs.graphs.items() if shape.kv) >= 4
    assert sum(graphs.graphs[s].graph.replays - 1 for s in kv_chunks) >= 1
    assert_like_generate(model, tokenizer, rows)


def _stale_buffers(loaded, monkeypatch, by_bounds: bool, max_new_tokens: int):
    """A generator whose decoding prefills run by replays (attending by bounds or through the mask), after
    a batch of `_mixed_prompts()[:6]` made its buffers, every element of which is then NaN."""
    from evaluation.engine.server import decode_attention, generation

    monkeypatch.setattr(generation, "graph_decode_prefill", True)
    if by_bounds:
        monkeypatch.setenv("ENGINE_FUSED", "1")
        monkeypatch.setattr(decode_attention, "everywhere", True)
    generator = BatchGenerator(loaded.model, loaded.tokenizer, decode="static", prefix_store_bytes=STORE_BYTES)
    generator.decode_prefix_saving = 0
    generator.generate(rows_for(loaded.tokenizer, _mixed_prompts()[:6], max_new_tokens=max_new_tokens))
    with torch.inference_mode():
        for t in generator.static.buffers.stacked:
            t.fill_(float("nan"))
    return generator, generator.static.buffers


@pytest.mark.parametrize("by_bounds", [True, False])
def test_a_prefill_by_replays_leaves_stale_columns_that_only_attending_through_the_mask_clears(
    loaded, graphs_on, monkeypatch, by_bounds
):
    """A prefill by replays writes only its rows' own columns (no zeroing of the whole buffers: ~0.5 ms
    of GPU time a batch at 1.1 B). Attending by bounds never reads the others; attending through the mask
    reads them as softmax weights of zero, so they are zeroed first (a stale NaN would spoil a row)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    generator, buffers = _stale_buffers(loaded, monkeypatch, by_bounds, max_new_tokens=5)
    rows = rows_for(tokenizer, _mixed_prompts()[:6], max_new_tokens=5)
    generator.generate(rows)
    assert generator.static.buffers is buffers and buffers.cache.bounded == by_bounds
    written = buffers.stacked[0][:, : len(rows)]  # (padding rows attend their own column 0, whatever it holds)
    assert bool(written.isnan().any()) == by_bounds  # left where bounds are read; cleared through the mask
    assert_like_generate(model, tokenizer, rows)


def test_a_join_that_turns_a_batch_to_the_mask_clears_the_running_rows_stale_columns(loaded, graphs_on, monkeypatch):
    """Rows joining that the bounds cannot describe: the batch attends through the mask from then on, so
    the running rows' unwritten columns (stale, never zeroed by their prefill by replays) are zeroed."""
    from evaluation.engine.server import decode_attention
    from tests.engine.test_joining import Arrivals

    model, tokenizer = loaded.model, loaded.tokenizer
    generator, buffers = _stale_buffers(loaded, monkeypatch, by_bounds=True, max_new_tokens=8)
    real = decode_attention.row_bounds
    monkeypatch.setattr(decode_attention, "row_bounds", lambda mask: (real(mask)[0], False))  # the join's
    first = rows_for(tokenizer, _mixed_prompts()[:6], max_new_tokens=8)
    later = rows_for(tokenizer, _mixed_prompts()[6:8], max_new_tokens=4)
    generator.generate(first, Arrivals({2: later}))
    assert generator.static.buffers is buffers and not buffers.cache.bounded and generator.last_joined
    assert_like_generate(model, tokenizer, first + later)
