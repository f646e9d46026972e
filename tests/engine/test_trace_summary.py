"""benchmarks/trace_summary.py: the GPU's kernels, its idle gaps and what the host ran in them."""

from __future__ import annotations

import json

from benchmarks.trace_summary import gaps, kernels, load, stretches, summarize


def _trace(tmp_path):
    events = [
        {"ph": "X", "cat": "user_annotation", "name": "graph_prefill", "ts": 100, "dur": 500},
        {"ph": "X", "cat": "kernel", "name": "gemm", "ts": 110, "dur": 40},
        {"ph": "X", "cat": "cpu_op", "name": "aten::copy_", "ts": 140, "dur": 100},  # 90 µs inside the gap
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": 240, "dur": 5},
        {"ph": "X", "cat": "kernel", "name": "gemm", "ts": 250, "dur": 40, "args": {"grid": [2, 64, 1]}},
        {"ph": "X", "cat": "kernel", "name": "attend", "ts": 300, "dur": 10},  # a 10 µs gap: not counted
        {"ph": "i", "cat": "kernel", "name": "instant", "ts": 0},  # not a complete event
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    return str(path)


def test_kernels_gaps_and_the_host_work_in_them(tmp_path):
    events, t0 = load(_trace(tmp_path))
    assert t0 == 100
    assert kernels(events, t0) == [("gemm", 2, 80), ("attend", 1, 10)]
    assert kernels(events, t0, from_us=150) == [("gemm", 1, 40), ("attend", 1, 10)]
    assert gaps(events) == [(100, 150, 250)]
    text = summarize(_trace(tmp_path), per=2)
    assert "busy 90 µs of a 200 µs span" in text and "1 gaps over 20 µs, 100 µs" in text
    assert "40.0     1.0×" in text  # gemm's 80 µs over 2
    assert "100 µs at        50 in graph_prefill: aten::copy_ 90, cudaGraphLaunch 5" in text


def test_a_window_of_kernels_by_grid_and_the_busy_stretches(tmp_path):
    events, t0 = load(_trace(tmp_path))
    assert kernels(events, t0, to_us=100) == [("gemm", 1, 40)]
    assert kernels(events, t0, from_us=100, grids=True) == [("[2, 64, 1] gemm", 1, 40), ("attend", 1, 10)]
    # The first kernel alone, then the two 10 µs apart as one stretch.
    assert stretches(events, t0) == [(10, 50, 40, 1), (150, 210, 50, 2)]
    assert "## GPU busy stretches" in summarize(_trace(tmp_path), to_us=100)
