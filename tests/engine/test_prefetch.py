"""Which weight each small kernel of a decode step asks L2 for (prefetch.py); the PTX is checked in
test_fused.py (the interpreter cannot run it)."""

import pytest
import torch

from evaluation.engine.server import fused, prefetch


def _installed(folder, monkeypatch, setting: str):
    from evaluation.engine.loading import load_model

    monkeypatch.setenv("ENGINE_FUSED", "1")
    monkeypatch.setenv("ENGINE_L2_PREFETCH", setting)
    monkeypatch.setattr(prefetch, "possible", lambda like: True)  # as on an sm90 card
    loaded = load_model(folder, device="cpu", dtype="float32")
    assert fused.install(loaded.model)
    return loaded.model


@pytest.mark.parametrize("setting", ["1", "last"])
def test_each_layer_asks_for_its_output_and_down_weights_and_the_next_layers_query_key_value(
    tiny_llama_dir, monkeypatch, setting
):
    layers = _installed(tiny_llama_dir, monkeypatch, setting).model.layers
    assert len(layers) > 1
    for i, layer in enumerate(layers):
        asks = layer._engine_prefetch
        assert asks["norm1"] is layer.self_attn.o_proj.weight
        assert asks["norm2"] is layer.mlp.down_proj.weight
        if i + 1 < len(layers):  # the joined product's weight, which the next step's first product reads
            assert asks["silu"] is layers[i + 1].self_attn._engine_joined.weight
        else:
            assert "silu" not in asks
    weight = layers[0].self_attn.o_proj.weight
    assert prefetch.args(weight, weight) == (weight, weight.numel() * weight.element_size(), prefetch.MODES[setting])


@pytest.mark.parametrize("setting", ["0", "no"])
def test_nothing_is_asked_when_off(tiny_llama_dir, monkeypatch, setting):
    layers = _installed(tiny_llama_dir, monkeypatch, setting).model.layers
    assert all(layer._engine_prefetch == {} for layer in layers)
    weight = layers[0].self_attn.o_proj.weight
    like = torch.zeros(1)
    assert prefetch.args(weight, like) == (like, 0, 0)


def test_not_on_the_cpu_nor_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("ENGINE_L2_PREFETCH", "1")
    weight = torch.zeros(4, 4)
    assert not prefetch.possible(weight)
    assert prefetch.args(weight, weight)[1:] == (0, 0)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not prefetch.possible(weight)


def test_only_decode_steps_ask(tiny_llama_dir, monkeypatch):
    """Prefills read each weight once for thousands of tokens: their kernels ask for nothing."""
    model = _installed(tiny_llama_dir, monkeypatch, "1")
    asked = []
    norm, silu = fused.rms_norm, fused.silu_mul
    monkeypatch.setattr(fused, "rms_norm", lambda *a, ask=None, **k: asked.append(ask) or norm(*a, **k))
    monkeypatch.setattr(fused, "silu_mul", lambda *a, ask=None, **k: asked.append(ask) or silu(*a, **k))
    with torch.no_grad(), fused.active(model):
        out = model(torch.tensor([[1, 2, 3, 4]]), use_cache=True)
        assert asked and all(a is None for a in asked)
        asked.clear()
        model(torch.tensor([[5]]), past_key_values=out.past_key_values, use_cache=True)
    layers = model.model.layers
    assert len(asked) == 3 * len(layers)
    assert asked[:3] == [layers[0]._engine_prefetch[k] for k in ("norm1", "norm2", "silu")]
