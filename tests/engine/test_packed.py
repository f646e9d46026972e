"""Single-token batches packed into one sequence (packed.py), fp32 on CPU: every row's own tokens side
by side in one forward, results equal to `generate` and to the padded batches."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from evaluation.engine.server import fused, packed
from evaluation.engine.server.batching import Limits, Scheduler, plan_batches
from evaluation.engine.server.generation import BatchGenerator
from evaluation.engine.server.stats import Stats
from tests.engine.reference import STORE_BYTES, assert_like_generate, forward_tokens, rows_for
from tests.engine.test_prefix_batches import run_prompts


def tiny_llama(request, tmp_path_factory, seed: int):
    """A tiny fp32 Llama with as many key/value heads as query heads ("mha") or four times fewer ("gqa")."""
    from evaluation.engine.loading import load_model
    from evaluation.engine.tiny import build_tiny_model

    kv_heads = 2 if request.param == "gqa" else None
    folder = build_tiny_model(
        tmp_path_factory.mktemp(request.param), "llama", seed=seed, num_heads=8, num_kv_heads=kv_heads
    )
    return load_model(folder, device="cpu", dtype="float32")


@pytest.fixture(scope="module", params=["mha", "gqa"])
def loaded(request, tmp_path_factory):
    return tiny_llama(request, tmp_path_factory, seed=3)


def reference_attention(q, k, v, causal, scale):
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    if causal:
        n = q.shape[-2]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, -1) @ v.double(), torch.logsumexp(scores, -1)


@pytest.mark.parametrize("causal", [False, True])
def test_attend_returns_the_softmax_and_its_log_sum_exp(causal):
    torch.manual_seed(0)
    q = torch.randn(3, 4, 9, 16)
    k, v = torch.randn(3, 4, 9, 16), torch.randn(3, 4, 9, 16)
    out, lse = packed.attend(q, k, v, causal, 0.25)
    want_out, want_lse = reference_attention(q, k, v, causal, 0.25)
    assert torch.allclose(out.double(), want_out, atol=1e-5) and torch.allclose(lse.double(), want_lse, atol=1e-5)


def test_merging_two_parts_by_their_log_sum_exps_is_attention_over_both_key_sets():
    torch.manual_seed(1)
    q = torch.randn(2, 4, 6, 16)
    k1, v1 = torch.randn(2, 4, 10, 16), torch.randn(2, 4, 10, 16)
    k2, v2 = torch.randn(2, 4, 7, 16), torch.randn(2, 4, 7, 16)
    out1, lse1 = packed.attend(q, k1, v1, False, 0.25)
    out2, lse2 = packed.attend(q, k2, v2, False, 0.25)
    want, _ = reference_attention(q, torch.cat([k1, k2], 2), torch.cat([v1, v2], 2), False, 0.25)
    merged = fused.merge_torch(out1, lse1, out2, lse2)
    assert torch.allclose(merged.double(), want, atol=1e-5)
    # In place, in the varlen layout: [tokens, heads, dim], log-sum-exps [tokens, heads] transposed views.
    own = out1[0].transpose(0, 1).contiguous()
    fused.merge_into(own, lse1[0].t(), out2[0].transpose(0, 1).contiguous(), lse2[0].t())
    assert torch.allclose(own.double(), want[0].transpose(0, 1), atol=1e-5)


def test_buckets_cover_every_token_once_and_pad_within_a_factor_of_two():
    lengths = [5, 1, 60, 7, 30, 2, 300]
    buckets = packed.buckets_for(lengths, torch.device("cpu"))
    targets = torch.cat([b.targets for b in buckets]).tolist()
    assert sorted(targets) == list(range(sum(lengths)))
    for bucket in buckets:
        rows, width = bucket.index.shape
        assert len(bucket.keep) == len(bucket.targets) and rows * width <= 2 * len(bucket.keep) + 8 * rows
        assert torch.equal(bucket.index.flatten()[bucket.keep], bucket.targets)  # real tokens in their places


def test_the_varlen_kernels_boundaries_are_each_rows_tokens_and_each_groups_against_its_prefix():
    cache = [(torch.zeros(1, 2, p, 8), torch.zeros(1, 2, p, 8)) for p in (30, 50)]
    layers = [[(k, v)] for k, v in cache]  # one layer per prefix here
    plan = packed.PackedPlan([3, 4, 2, 5, 1], [(0, 7, layers[0]), (7, 14, layers[1])], torch.device("cpu"))
    cuts = plan.varlen
    assert cuts["own"][0].tolist() == [0, 3, 7, 9, 14, 15] and cuts["own"][1] == 5
    assert cuts["queries"][0].tolist() == [0, 7, 14] and cuts["queries"][1] == 7
    assert cuts["keys"][0].tolist() == [0, 30, 80] and cuts["keys"][1] == 50
    assert cuts["prefix_tokens"] == 14  # the last row (one token) has no prefix
    assert all(t.dtype == torch.int32 for t in (cuts["own"][0], cuts["queries"][0], cuts["keys"][0]))


def test_rows_of_three_runs_and_unrelated_rows_packed_equal_generate(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    assert generator.packing
    # Mixed lengths: questions of several widths, and rows that share nothing (a one-token prompt).
    prompts = [
        p for trio in zip(run_prompts(0, 4), run_prompts(1, 4), run_prompts(2, 4, 95), strict=True) for p in trio
    ]
    prompts += ["A", "The doctor and the nurse talked about his and her patients."]
    rows = rows_for(tokenizer, prompts, max_new_tokens=1)
    passes = forward_tokens(model, lambda: generator.generate(rows))
    assert generator.last_packed and len(generator.prefixes) == 3
    # Three prefixes, then one forward of exactly the rows' own tokens, none padded.
    total = sum(len(r.prompt_ids) for r in rows)
    assert len(passes) == 4 and passes[-1] == total - generator.last_skipped_tokens - sum(passes[:3])
    assert_like_generate(model, tokenizer, rows)

    later = rows_for(tokenizer, run_prompts(2, 3, 10) + run_prompts(0, 1, 10), max_new_tokens=1)
    passes = forward_tokens(model, lambda: generator.generate(later))
    assert generator.last_packed and generator.last_prefix_reused and len(passes) == 1
    assert_like_generate(model, tokenizer, later)


def test_packed_results_equal_the_padded_batch(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    prompts = run_prompts(0, 5) + run_prompts(1, 3, 40) + ["Convert 3 kilometres to metres."]
    results = {}
    for packing in (True, False):
        generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES, packing=packing)
        rows = rows_for(tokenizer, prompts, max_new_tokens=1)
        generator.generate(rows)
        assert generator.last_packed == packing
        results[packing] = [(r.tokens, r.logprobs, r.finish_reason) for r in rows]
    for (tokens, logprobs, reason), (tokens_p, logprobs_p, reason_p) in zip(results[True], results[False], strict=True):
        assert tokens == tokens_p and reason == reason_p and abs(logprobs[0] - logprobs_p[0]) < 1e-4


def test_packed_rows_with_zero_new_tokens_and_a_prompt_of_one_token(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    rows = rows_for(tokenizer, ["A", *run_prompts(1, 2)], max_new_tokens=1)
    rows[1].max_new_tokens = 0
    generator.generate(rows)
    assert generator.last_packed
    assert rows[1].tokens == [] and rows[1].finish_reason == "length"
    assert_like_generate(model, tokenizer, [rows[0], rows[2]])


@contextmanager
def later_layers_skipping_packed_attention():
    """Layers after the first attend with SDPA over whatever they are given (a model whose attention
    does not all go through the interface)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    real = packed.packed_attention

    def skip_later_layers(module, *args, **kwargs):
        if module.layer_idx == 0:
            return real(module, *args, **kwargs)
        return sdpa_attention_forward(module, *args, **kwargs)

    AttentionInterface.register(packed.PACKED_ATTENTION, skip_later_layers)
    try:
        yield
    finally:
        AttentionInterface.register(packed.PACKED_ATTENTION, real)


def test_a_model_whose_layers_skip_packed_attention_falls_back_to_padding(loaded):
    """If some layer attended on its own, it saw the whole packed sequence: the batch is redone padded."""
    model, tokenizer = loaded.model, loaded.tokenizer
    generator = BatchGenerator(model, tokenizer, prefix_store_bytes=STORE_BYTES)
    rows = rows_for(tokenizer, run_prompts(0, 3), max_new_tokens=1)
    with later_layers_skipping_packed_attention():
        generator.generate(rows)
    assert not generator.packing and not generator.last_packed
    assert_like_generate(model, tokenizer, rows)


def test_packed_batches_are_planned_by_their_own_tokens(loaded):
    tokenizer = loaded.tokenizer
    rows = rows_for(tokenizer, run_prompts(0, 20) + run_prompts(1, 20), max_new_tokens=1)
    # Each row's own tokens are its question (under 20 tokens); the padded plan counts whole prompts.
    (batch,) = plan_batches(rows, Limits(max_packed_tokens=40 * 20), packed=True)
    assert len(batch) == 40
    assert len(plan_batches(rows, Limits(max_batch_tokens=40 * 20, prefix_store_tokens=0))) > 1
    limited = plan_batches(rows, Limits(max_packed_tokens=10_000, max_packed_rows=16), packed=True)
    assert [len(b) for b in limited] == [16, 16, 8]
    assert len(plan_batches(rows, Limits(max_packed_tokens=200), packed=True)) > 1


def test_a_packed_batch_out_of_memory_is_split_and_the_packed_limits_shrink(loaded):
    model, tokenizer = loaded.model, loaded.tokenizer

    class Tight(BatchGenerator):
        def _packed_prefill(self, groups):
            if sum(len(g.rows) for g in groups) > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return super()._packed_prefill(groups)

    stats, limits = Stats(), Limits()
    rows = rows_for(tokenizer, run_prompts(0, 3) + run_prompts(1, 3), max_new_tokens=1)
    Scheduler(Tight(model, tokenizer, prefix_store_bytes=STORE_BYTES), stats, limits).run(rows)
    assert stats.out_of_memory_splits == 1
    assert limits.max_packed_rows == 3 and limits.max_packed_tokens == Limits().max_packed_tokens // 2
    assert all(r.finish_reason == "length" for r in rows)
    assert_like_generate(model, tokenizer, rows)


def test_models_that_do_not_attend_through_the_interface_are_not_packed(tiny_gpt2_dir):
    from evaluation.engine.loading import load_model

    gpt2 = load_model(tiny_gpt2_dir, device="cpu", dtype="float32")
    assert not packed.supports(gpt2.model)
    assert not BatchGenerator(gpt2.model, gpt2.tokenizer, prefix_store_bytes=STORE_BYTES).packing
