"""benchmarks/warm_up_profile.py: a server's warm-up under cProfile, here on the CPU."""

from __future__ import annotations

from benchmarks import warm_up_profile


def test_it_prints_the_start_up_line_and_the_warm_ups_functions(tiny_llama_dir, capsys):
    assert warm_up_profile.main([str(tiny_llama_dir), "--device", "cpu", "--dtype", "float32", "--top", "8"]) == 0
    out = capsys.readouterr().out
    assert "startup {" in out and "'warm_up_parts': {'forward':" in out
    assert "Ordered by: cumulative time" in out and "Ordered by: internal time" in out
    assert "(warm_up)" in out  # the server's own warm-up is what was profiled
    from evaluation.engine.server import app

    assert app.ModelService.warm_up.__name__ == "warm_up"  # put back for every later server
