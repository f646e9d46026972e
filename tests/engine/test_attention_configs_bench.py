"""benchmarks/attention_configs.py times the step's attention as the static decoder lays a generation
batch out: its bounds are ones the decoder's mask gives (one prefix run, then the row's own columns),
the engine's launch comes first, and a config's settings hold only while its call runs."""

import torch

from benchmarks import attention_configs as bench
from evaluation.engine.server import decode_attention


def test_the_rows_bounds_are_the_static_decoders_layout():
    inputs = bench.step_inputs("cpu", torch.float32, layers=1)
    width = int(inputs["column"]) + 1  # the mask up to the step's column, as row_bounds reads a prefill's
    mask = decode_attention.bounds_mask(inputs["bounds"], inputs["column"], width)
    bounds, fits = decode_attention.row_bounds(mask)
    assert fits and torch.equal(bounds[: bench.FILLED], inputs["bounds"][: bench.FILLED])
    keys = mask.sum(1)
    assert keys[: bench.FILLED].min() >= 85 + 20 + bench.NEW and keys[bench.FILLED :].eq(bench.NEW + 1).all()


def test_the_engines_launch_first_then_each_other_once():
    configs = bench.configs([32, 64], [None, 4], [None], [1, 2])
    assert configs[0] == dict(block=decode_attention.BLOCK_N, warps=None, stages=None, splits=1)
    assert len(configs) == 8 and len({tuple(sorted(c.items())) for c in configs}) == 8


def test_a_configs_settings_hold_only_during_its_call(monkeypatch):
    monkeypatch.setattr(decode_attention, "everywhere", True)  # the torch reference on the CPU
    seen = []
    real = decode_attention.rope_attend

    def spy(*args, **kwargs):
        seen.append((decode_attention.BLOCK_N, dict(decode_attention.LAUNCH_OPTIONS)))
        return real(*args, **kwargs)

    monkeypatch.setattr(decode_attention, "rope_attend", spy)
    inputs = bench.step_inputs("cpu", torch.float32, layers=2)
    out = bench.run_config(inputs, dict(block=32, warps=2, stages=1, splits=1), "cpu")()
    assert out.shape == (bench.ROWS, 1, bench.HEADS, bench.DIM) and torch.isfinite(out).all()
    assert seen == [(32, {"num_warps": 2, "num_stages": 1})] * 2
    assert decode_attention.BLOCK_N == 64 and decode_attention.LAUNCH_OPTIONS == {}


def test_the_ablations_keep_the_layout_but_for_the_keys_they_drop(monkeypatch):
    """Without cached keys every row attends to the step's own key only; each variant runs."""
    monkeypatch.setattr(decode_attention, "everywhere", True)
    inputs = bench.step_inputs("cpu", torch.float32, layers=1)
    variants = bench.ablations(inputs)
    assert list(variants) == ["engine", "unscaled", "no keys", "no keys, unscaled"]
    empty = variants["no keys"][0]
    mask = decode_attention.bounds_mask(empty["bounds"], empty["column"], bench.COLUMNS)
    assert mask.sum(1).eq(1).all() and mask[:, int(empty["column"])].all()
    assert variants["engine"][0] is inputs and [v[1] for v in variants.values()] == [True, False, True, False]
    engine = bench.engine_config()
    outs = {name: bench.run_config(v, engine, "cpu", scaled)() for name, (v, scaled) in variants.items()}
    assert all(torch.isfinite(o).all() for o in outs.values())
    # With only its own key, a row's output is its value (scaled by the row's RMS factor where scaled).
    own_value = inputs["v"].reshape(bench.ROWS, bench.KV_HEADS, bench.DIM)
    want = own_value.repeat_interleave(bench.HEADS // bench.KV_HEADS, dim=1)
    assert torch.allclose(outs["no keys, unscaled"].reshape(bench.ROWS, bench.HEADS, bench.DIM), want)
    assert not torch.allclose(outs["no keys"], outs["no keys, unscaled"])
