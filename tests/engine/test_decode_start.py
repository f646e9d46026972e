"""benchmarks/decode_start.py: a decoding batch's prefill and start piece by piece, here on the CPU."""

from __future__ import annotations

from benchmarks import decode_start


def test_it_times_the_prefill_and_each_piece_of_the_start(tiny_llama_dir, capsys):
    argv = [str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32", "--rows", "6", "--new-tokens", "4",
            "--batches", "2", "--top", "5"]  # fmt: skip
    assert decode_start.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("batch ") == 2 and "'start':" in out and "steps 3" in out
    for piece in ("'prefill'", "'reserve'", "'row_bounds'", "'cache_tensors'", "'refresh_rotary'", "'start'", "'feed'"):
        assert piece in out.split("batch 1")[1]
    assert "Self CPU" in out  # the profiled batch's table
    from evaluation.engine.server import decode_attention, static_decode

    # Put back for every later test.
    assert decode_attention.row_bounds.__name__ == "row_bounds"
    assert static_decode._Buffers.refresh_rotary.__name__ == "refresh_rotary"
