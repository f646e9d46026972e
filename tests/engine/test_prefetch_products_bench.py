"""benchmarks/prefetch_products.py's kernels compute torch's products (under Triton's interpreter, in
fp16), and what they compile to for an H100/H200 loads the weight before it waits on the kernel ahead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.test_fused import _ptx as compiled

ROOT = Path(__file__).resolve().parents[2]


def test_each_product_equals_torchs_under_the_interpreter():
    """q/k/v (stored), output and down (added into the residual), gate/up with SiLU × up and the rows'
    RMS factor, each split in K and summed by the last split, for 24 rows of a 64-row block."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.prefetch_products", "--check", "--rows", "24", "--check-configs", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert sum(" max diff " in line for line in lines) == 4
    worst = float(lines[-1].rsplit(" ", 1)[1])
    assert 0 < worst < 2e-3  # fp16 products of 2,048-5,632 terms summed in another order


def _ptx(pdl: bool) -> str:
    """The q/k/v product's kernel compiled for sm90 (test_fused's helper)."""
    pytest.importorskip("triton")
    from benchmarks import prefetch_products as bench

    sig = {"x_ptr": "*bf16", "x_row": "i32", "w_ptr": "*bf16", "out_ptr": "*bf16", "part_ptr": "*fp32",
           "count_ptr": "*i32", "rows": "i32", "inv_n": "fp32", "eps": "fp32"}  # fmt: skip
    consts = dict(N=2560, K=2048, M=64, BN=64, KS=256, MODE=bench.STORE, PDL=pdl, EXACT=True)
    return compiled(bench._product_kernel, sig, consts, aligned=[0, 2, 3, 4, 5], options={"num_warps": 4})


def test_an_early_launch_loads_its_weights_before_it_waits():
    ptx = _ptx(pdl=True)
    trigger, wait = ptx.index("griddepcontrol.launch_dependents"), ptx.index("griddepcontrol.wait")
    assert trigger < wait
    # The slab's loads (16 B each: 256 x 64 bf16 over 128 threads, 16 a thread) before the wait.
    assert ptx[:wait].count("ld.global") >= 16
    assert "griddepcontrol" not in _ptx(pdl=False)
