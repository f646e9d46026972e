"""Folded norms (folded.py): each RMSNorm's weight folded into the products it feeds, decode steps
without norm kernels. fp32 on the CPU, fused layers and bounded attention through the torch references
(the kernels' scaled paths are checked against them under Triton's interpreter:
test_fused.test_kernels_under_tritons_interpreter). The norms' weights are made random first: a tiny
model's are ones, which any fold would keep."""

from __future__ import annotations

import pytest
import torch

from evaluation.engine.server import decode_attention, folded, fused
from evaluation.engine.server.generation import BatchGenerator
from tests.engine.reference import FEW_SHOT_PROMPTS, PROMPTS, assert_like_generate, rows_for
from tests.engine.test_joining import Arrivals


def _load(folder):
    from evaluation.engine.loading import load_model

    loaded = load_model(folder, device="cpu", dtype="float32")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in loaded.model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=gen))
    return loaded


def _load_half(folder):
    from evaluation.engine.loading import load_model

    return load_model(folder, device="cpu", dtype="float16").model


@pytest.fixture
def folding(monkeypatch):
    """Fused layers, folding and bounded attention on the CPU; counts of the folded layers' steps and
    of the scaled attention and SiLU × up they ran."""
    monkeypatch.setenv("ENGINE_FUSED", "1")
    monkeypatch.setenv("ENGINE_FOLD_NORMS", "1")
    monkeypatch.setattr(decode_attention, "everywhere", True)
    counts = {"layers": 0, "attend": 0, "silu": 0}

    def counted(name, fn, scaled_at):
        def wrapper(*args, **kwargs):
            scale_of = kwargs.get("scale_of", args[scaled_at] if len(args) > scaled_at else None)
            counts[name] += scale_of is not None
            return fn(*args, **kwargs)

        return wrapper

    step_parts = folded.step_parts

    def layer(*args, **kwargs):
        counts["layers"] += 1
        return step_parts(*args, **kwargs)

    monkeypatch.setattr(folded, "step_parts", layer)
    monkeypatch.setattr(
        decode_attention, "rope_attend_torch", counted("attend", decode_attention.rope_attend_torch, 10)
    )
    monkeypatch.setattr(fused, "_silu_mul_fallback", counted("silu", fused._silu_mul_fallback, 2))
    return counts


def test_fold_gives_the_steps_copies_with_the_norms_weights_and_leaves_the_model_as_it_was(tiny_llama_dir, folding):
    model = _load(tiny_llama_dir).model
    reference = _load(tiny_llama_dir).model
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    assert fused.install(model) and folded.fold(model) and folded.folded(model)
    layer, plain = model.model.layers[0], reference.model.layers[0]
    # The copies: each joined product's weight with its norm's weight in its columns.
    qkv, gate_up = layer.self_attn._engine_joined, layer.mlp._engine_joined
    torch.testing.assert_close(qkv.folded, qkv.weight * plain.input_layernorm.weight[None, :], rtol=0, atol=0)
    torch.testing.assert_close(gate_up.folded, gate_up.weight * plain.post_attention_layernorm.weight[None, :],
                               rtol=0, atol=0)  # fmt: skip
    # The model itself is untouched: its weights, its norms, every forward but the decode steps, bitwise.
    for mine, theirs in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    with fused.active(model):
        got = model(ids).logits
    assert torch.equal(got, reference(ids).logits)
    joined_numel = sum(
        j.weight.numel()
        for block in model.model.layers
        for j in (block.self_attn._engine_joined, block.mlp._engine_joined)
    )
    adding_numel = sum(b.self_attn.o_proj.weight.numel() + b.mlp.down_proj.weight.numel() for b in model.model.layers)
    assert folded.extra_bytes(model) == 4 * (joined_numel + adding_numel)
    # Stored transposed, [in, out] contiguous: the folded products as views, the adding ones as copies.
    assert qkv.folded.t().is_contiguous() and gate_up.folded.t().is_contiguous()
    o_weight, down_weight = layer._engine_adding
    assert o_weight.is_contiguous() and down_weight.is_contiguous()
    assert torch.equal(o_weight, plain.self_attn.o_proj.weight.t())
    assert torch.equal(down_weight, plain.mlp.down_proj.weight.t())
    assert o_weight.data_ptr() != layer.self_attn.o_proj.weight.data_ptr()
    assert folded.fold(model) and qkv.folded is layer.self_attn._engine_joined.folded  # once


@pytest.mark.parametrize("transposed", ["1", "0"])
def test_folded_steps_equal_generate_with_padding_shared_prefixes_and_joins(tiny_llama_dir, folding, monkeypatch,
                                                                           transposed):  # fmt: skip
    """The unfolded model's greedy tokens and logprobs, from steps that ran every layer folded: the
    attention and SiLU × up scaled each row themselves, no norm but the final one; the steps' weights
    stored transposed (the default) or as the model's."""
    monkeypatch.setenv("ENGINE_FOLD_TRANSPOSED", transposed)
    loaded = _load(tiny_llama_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    reference = _load(tiny_llama_dir).model
    first = rows_for(tokenizer, PROMPTS[:3], max_new_tokens=10)
    later = rows_for(tokenizer, PROMPTS[3:], max_new_tokens=12)
    prefixed = rows_for(tokenizer, FEW_SHOT_PROMPTS, max_new_tokens=6)
    generator = BatchGenerator(model, tokenizer, decode="static")
    assert generator.folded
    o_weight = model.model.layers[0]._engine_adding[0]
    assert (o_weight.data_ptr() == model.model.layers[0].self_attn.o_proj.weight.data_ptr()) == (transposed == "0")
    norms = []
    for layer in model.model.layers:
        layer.input_layernorm.register_forward_hook(lambda m, a, o: norms.append(a[0].shape[1]))
    generator.generate(first, Arrivals({2: later, 5: prefixed}))
    assert generator.static.buffers.cache.bounded
    layers = model.config.num_hidden_layers
    assert folding["layers"] >= layers * generator.last_decode_steps > 0
    assert folding["attend"] == folding["silu"] == folding["layers"]
    assert 1 not in norms  # the input norms ran in the prefills only
    for mine, theirs in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)  # the steps read copies
    assert_like_generate(reference, tokenizer, first + later + prefixed)


@pytest.mark.parametrize("apart", ["rope_attend off", "mask"])
def test_folded_steps_without_the_scaled_attention_still_equal_generate(tiny_llama_dir, folding, monkeypatch, apart):
    """Where the step's attention cannot scale the rows itself (`rope_attend` turned off at the warm-up),
    the layer scales them in torch; where the bounds cannot describe a row's mask, the steps keep the
    fused layers' path through the norms: the same tokens either way."""
    loaded = _load(tiny_llama_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    reference = _load(tiny_llama_dir).model
    if apart == "rope_attend off":
        monkeypatch.setattr(decode_attention, "rope_inside", False)
    else:
        real = decode_attention.row_bounds
        monkeypatch.setattr(decode_attention, "row_bounds", lambda mask: (real(mask)[0], False))
    rows = rows_for(tokenizer, PROMPTS[:4], max_new_tokens=8)
    generator = BatchGenerator(model, tokenizer, decode="static")
    generator.generate(rows)
    assert folding["attend"] == 0 and generator.folded
    if apart == "mask":
        assert not generator.static.buffers.cache.bounded and folding["layers"] == 0
    else:
        assert folding["layers"] > 0 and folding["silu"] == folding["layers"]
    assert_like_generate(reference, tokenizer, rows)


def test_fold_applies_only_where_it_may(tiny_llama_dir, monkeypatch):
    """By default only half precision on a GPU folds (fp32 keeps its norms: equality with stock HELM);
    `ENGINE_FOLD_NORMS=0` never; a layer whose products carry a bias never (it would take the scale)."""
    monkeypatch.setenv("ENGINE_FUSED", "1")
    model = _load(tiny_llama_dir).model
    assert fused.install(model)
    monkeypatch.delenv("ENGINE_FOLD_NORMS", raising=False)
    assert not folded.possible(model)  # the CPU, fp32
    monkeypatch.setenv("ENGINE_FOLD_NORMS", "0")
    assert not folded.fold(model) and not folded.folded(model)
    monkeypatch.setenv("ENGINE_FOLD_NORMS", "1")
    assert folded.possible(model)
    model = _load(tiny_llama_dir).model
    assert fused.install(model)
    o_proj = model.model.layers[1].self_attn.o_proj
    o_proj.bias = torch.nn.Parameter(torch.zeros(o_proj.out_features))
    assert not folded.possible(model) and not folded.fold(model)
    assert model.model.layers[0].self_attn._engine_joined.folded is None  # nothing folded
    assert not folded.possible(_load(tiny_llama_dir).model)  # not installed fused: nothing joined


def test_the_copies_must_fit_a_tenth_of_what_the_allocator_may_hold(tiny_llama_dir, monkeypatch):
    """`auto` on a GPU: a 1.1 B model's copies (1.9 GB, 1.2 in the model's layout) under a 24 GB budget
    fold, a 6.7 B model's (13 GB, 9) do not. The model here stands on a "GPU" by its parameters' answer
    to is_cuda."""
    from evaluation.engine.loading import CUDA_CONTEXT_ALLOWANCE_BYTES as CONTEXT

    monkeypatch.setenv("ENGINE_FUSED", "1")
    monkeypatch.delenv("ENGINE_FOLD_NORMS", raising=False)
    model = _load_half(tiny_llama_dir)
    assert fused.install(model)
    extra = folded.extra_bytes(model, transposed=False)  # the least copies a fold takes
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    least = CONTEXT + int(extra / folded.MAX_SHARE) + 1  # the budget whose allocator cap holds ten copies
    assert folded.possible(model, budget_bytes=least)
    assert not folded.possible(model, budget_bytes=least - 100)
    # The server's call, under the track's budget, decides; a BatchGenerator's later one (the whole
    # card's memory) keeps that decision.
    assert not folded.fold(model, budget_bytes=least - 100)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: type("P", (), {"total_memory": 10 * least}))
    assert folded.possible(model) and not folded.fold(model) and not folded.folded(model)


def test_copies_that_fit_only_in_the_models_layout_fold_in_it(tiny_llama_dir, monkeypatch):
    """The transposed layout's output and down copies take more: a budget whose tenth holds the folded
    q/k/v and gate/up copies but not those too folds with the steps reading the model's own output and
    down weights, rather than not at all."""
    from evaluation.engine.loading import CUDA_CONTEXT_ALLOWANCE_BYTES as CONTEXT

    monkeypatch.setenv("ENGINE_FUSED", "1")
    monkeypatch.delenv("ENGINE_FOLD_NORMS", raising=False)
    monkeypatch.delenv("ENGINE_FOLD_TRANSPOSED", raising=False)
    model = _load_half(tiny_llama_dir)
    assert fused.install(model)
    plain, transposed = folded.extra_bytes(model, False), folded.extra_bytes(model, True)
    assert plain < transposed == folded.extra_bytes(model)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    budget = CONTEXT + int(plain / folded.MAX_SHARE) + 1
    assert folded.possible(model, budget_bytes=budget) and folded.fold(model, budget_bytes=budget)
    layer = model.model.layers[0]
    assert layer._engine_adding[0].data_ptr() == layer.self_attn.o_proj.weight.data_ptr()  # a view: no copy
    assert layer.self_attn._engine_joined.folded.is_contiguous()  # the model's layout
    roomy = _load_half(tiny_llama_dir)
    assert fused.install(roomy) and folded.fold(roomy, budget_bytes=CONTEXT + int(transposed / folded.MAX_SHARE) + 1)
    assert (
        roomy.model.layers[0]._engine_adding[0].data_ptr() != roomy.model.layers[0].self_attn.o_proj.weight.data_ptr()
    )


def test_stats_say_whether_the_steps_ran_folded(tiny_llama_dir, folding, monkeypatch):
    from evaluation.engine.server.app import ModelService
    from evaluation.engine.server.batching import Limits

    loaded = _load(tiny_llama_dir)
    service = ModelService(loaded, Limits(max_batch_size=8, max_batch_tokens=4096), decode="static")
    assert service.stats_snapshot()["decode"]["folded_norms"] is True
    monkeypatch.setenv("ENGINE_FOLD_NORMS", "0")
    service = ModelService(_load(tiny_llama_dir), Limits(max_batch_size=8, max_batch_tokens=4096), decode="static")
    assert service.stats_snapshot()["decode"]["folded_norms"] is False
