"""benchmarks/decode_start.py: a decoding batch's prefill and start piece by piece, here on the CPU."""

from __future__ import annotations

import json

from benchmarks import decode_start


def test_it_times_the_prefill_and_each_piece_of_the_start(tiny_llama_dir, capsys, tmp_path):
    trace = tmp_path / "trace.json"
    argv = [str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32", "--rows", "6", "--new-tokens", "4",
            "--batches", "2", "--top", "5", "--trace", str(trace)]  # fmt: skip
    assert decode_start.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("batch ") == 2 and "'start':" in out and "steps 3" in out
    for piece in ("'prefill'", "'reserve'", "'row_bounds'", "'cache_tensors'", "'refresh_rotary'", "'start'", "'feed'"):
        assert piece in out.split("batch 1")[1]
    assert "Self CPU" in out  # the profiled batch's table
    events = json.loads(trace.read_text())["traceEvents"]
    assert {"reserve", "start", "feed"} <= {e.get("name") for e in events}  # the pieces on its timeline
    from evaluation.engine.server import decode_attention, static_decode

    # Put back for every later test.
    assert decode_attention.row_bounds.__name__ == "row_bounds"
    assert static_decode._Buffers.refresh_rotary.__name__ == "refresh_rotary"


def test_it_times_the_prefill_by_replays_where_that_is_on(tiny_llama_dir, capsys, monkeypatch):
    from evaluation.engine.server import generation

    monkeypatch.setenv("ENGINE_PACKED_GRAPHS", "1")
    monkeypatch.setattr(generation, "graph_decode_prefill", True)
    argv = [str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32", "--rows", "6", "--new-tokens", "4",
            "--batches", "1", "--top", "0"]  # fmt: skip
    assert decode_start.main(argv) == 0
    out = capsys.readouterr().out
    assert "('graph_prefill'" in out and "('prefill'" not in out  # the forward did not run
    assert "(packed replays' host ms) [('prefixes'" in out and "('replay'" in out


def test_host_operators_count_the_prefill_and_start_outside_replays_outermost_only():
    from types import SimpleNamespace

    def event(name, parent=None):
        return SimpleNamespace(name=name, cpu_parent=parent)

    prefill, start, steps = event("graph_prefill"), event("start"), event("step")
    replay = event("replay", prefill)
    copy = event("aten::copy_", prefill)
    events = [
        copy, event("aten::empty_like", copy),  # nested in the copy: counted once, as the copy
        event("aten::mm", replay),  # inside a replay (one launch on a GPU)
        event("aten::fill_", start), event("aten::cat", event("named range", start)),
        event("aten::mm", steps), prefill, start,  # a step's operator; the ranges themselves
    ]  # fmt: skip
    assert decode_start.host_operators(events) == {"operators": 3, "copies": 2}
