"""The decode steps' products through cuBLASLt with timed algorithm choices (lt_matmul.py). On the CPU
cuBLASLt is absent: these check the torch path every product falls back to, the folded steps through it,
the products handed to the timing, the choices' cache and the structures' sizes against cublasLt.h. The
choices themselves run on the GPU (`benchmarks/lt_algos.py`, docs/benchmarks.md session 31)."""

from __future__ import annotations

import ctypes

import pytest
import torch

from evaluation.engine.server import cuda_graphs, folded, fused, lt_matmul
from evaluation.engine.server.generation import BatchGenerator
from tests.engine.reference import PROMPTS, assert_like_generate, rows_for
from tests.engine.test_folded import _load, folding  # noqa: F401  (the fixture)


@pytest.fixture(autouse=True)
def _no_choices():
    lt_matmul.forget()
    yield
    lt_matmul.forget()


def test_structures_are_cublaslt_h_sizes():
    # cublasLtMatmulAlgo_t: uint64_t data[8]; the heuristic result: algo, size_t, status, float, int[4].
    assert ctypes.sizeof(lt_matmul.Algo) == 64
    assert ctypes.sizeof(lt_matmul.HeuristicResult) == 96
    assert lt_matmul.HeuristicResult.state.offset == 72 and lt_matmul.HeuristicResult.waves_count.offset == 76


@pytest.mark.parametrize("accumulate", [False, True])
def test_products_without_a_choice_are_torchs_bitwise(accumulate):
    gen = torch.Generator().manual_seed(3)
    a, b, res = torch.randn(5, 7, generator=gen), torch.randn(7, 9, generator=gen), torch.randn(5, 9, generator=gen)
    out = res.clone()
    got = lt_matmul.mm(a, b, out, accumulate=accumulate)
    assert got is out
    assert torch.equal(got, res.clone().addmm_(a, b) if accumulate else torch.mm(a, b))
    assert torch.equal(lt_matmul.mm(a, b), torch.mm(a, b))  # a new output


def test_nothing_is_timed_without_cublaslt_or_when_switched_off(monkeypatch, tiny_llama_dir, folding):  # noqa: F811
    model = _load(tiny_llama_dir).model
    assert fused.install(model) and folded.fold(model)
    groups = folded.product_groups(model)
    monkeypatch.setenv("ENGINE_LT", "1")
    assert lt_matmul.enabled()
    assert lt_matmul.tune(groups, [64]) == {} and not lt_matmul._chosen  # no CUDA here
    monkeypatch.setenv("ENGINE_LT", "0")
    assert not lt_matmul.enabled()
    monkeypatch.setattr(lt_matmul, "available", lambda: True)
    assert lt_matmul.tune(groups, [64]) == {}


def test_product_groups_are_each_layers_step_weights_in_in_out_layout(tiny_llama_dir, folding):  # noqa: F811
    model = _load(tiny_llama_dir).model
    assert folded.product_groups(model) == {}  # not folded
    assert fused.install(model) and folded.fold(model)
    groups = folded.product_groups(model)
    config = model.config
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    qkv_out = (config.num_attention_heads + 2 * config.num_key_value_heads) * (hidden // config.num_attention_heads)
    expected = {"qkv": ((hidden, qkv_out), False), "o": ((hidden, hidden), True),
                "gate_up": ((hidden, 2 * inter), False), "down": ((inter, hidden), True)}  # fmt: skip
    assert {name: (weights[0].shape, adds) for name, (weights, adds) in groups.items()} == {
        name: (torch.Size(shape), adds) for name, (shape, adds) in expected.items()
    }
    for weights, _ in groups.values():
        assert len(weights) == layers and all(w.is_contiguous() for w in weights)
    layer = model.model.layers[1]
    assert torch.equal(groups["qkv"][0][1], layer.self_attn._engine_joined.folded.t())
    assert groups["down"][0][1] is layer._engine_adding[1]


def test_folded_steps_through_the_chosen_products_path_equal_generate(tiny_llama_dir, folding, monkeypatch):  # noqa: F811
    """With a choice on record (for a shape these steps never have), the folded steps take the
    products' own path (`folded._project`, `lt_matmul.mm`): the same tokens as `generate`."""
    loaded = _load(tiny_llama_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    reference = _load(tiny_llama_dir).model
    lt_matmul._chosen[(999, 1, 1, torch.float32, False)] = object()
    projected = []
    project = folded._project
    monkeypatch.setattr(folded, "_project", lambda j, h: projected.append(h.shape[0]) or project(j, h))
    rows = rows_for(tokenizer, PROMPTS[:3], max_new_tokens=8)
    generator = BatchGenerator(model, tokenizer, decode="static")
    assert generator.folded
    generator.generate(rows)
    assert projected
    assert_like_generate(reference, tokenizer, rows)


def test_the_choices_cache_round_trips_and_survives_a_broken_file(tmp_path, monkeypatch):
    path = tmp_path / "lt.json"
    monkeypatch.setenv("ENGINE_LT_CACHE", str(path))
    assert lt_matmul._read_cache() == {}
    entry = {"algo": "ab" * 64, "torch_us": 11.3, "chosen_us": 9.1, "candidates": 40, "seconds": 0.8}
    key = "NVIDIA H200|13.0|libcublasLt.so.13|64x2048x5632|bfloat16|1"
    lt_matmul._write_cache({key: entry})
    assert lt_matmul._read_cache() == {key: entry}
    path.write_text("{not json")
    assert lt_matmul._read_cache() == {}


def test_torchs_product_is_timed_first_and_last_and_its_lower_figure_kept(monkeypatch):
    """A candidate is chosen only against torch's better figure (a slow first graph favours none)."""

    class Candidates:
        def candidates(self, count):
            return ["fast", "slow"]

    figures = {"fast": 6.8, "slow": 9.0}
    torch_figures = iter([7.5, 6.7])  # first (cold) and last
    monkeypatch.setattr(lt_matmul, "_workspace", lambda device: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(
        cuda_graphs,
        "replayed_ms",
        lambda run, replays: (next(torch_figures) if run.args[0] is None else figures[run.args[0]], None),
    )
    timed = lt_matmul.time_candidates(Candidates(), lambda algo: None)
    assert timed == [(6.7, None), (6.8, "fast"), (9.0, "slow")]
