"""benchmarks/persistent_layer.py's one-kernel layer computes what the engine's folded layer computes
(each phase a launch of its own under Triton's interpreter), and what it compiles for an H100/H200
holds its grid-wide waits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_phases_compute_the_engines_folded_layers():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.persistent_layer", "--check"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(report) == {"all", "attention half", "mlp half", "mlp half, squares apart"}
    for name, part in report.items():
        # fp16 after two layers: the sums' order (splits, blocks) moves a value by an ulp or so
        assert part["finite"] and part["largest"] > 1 and part["max_abs_diff"] <= 0.02, (name, part)


def test_blocks_must_divide_the_products():
    from benchmarks import persistent_layer as bench

    shape = bench.SHAPES["1b"]
    assert bench.check_blocks(shape, bench.ENGINE_BLOCKS) is None
    why = bench.check_blocks(shape, dict(bench.ENGINE_BLOCKS, bn_gu=96))
    assert why and why.startswith("gate/up")
    assert bench.check_blocks(shape, dict(bench.ENGINE_BLOCKS, s_down=16)).startswith("down")


def test_the_compiled_kernel_waits_for_the_grid():
    pytest.importorskip("triton")
    import torch

    from benchmarks import persistent_layer as bench
    from tests.engine.test_fused import _ptx

    s = bench.Shape(**{**bench.SHAPES["1b"].__dict__, "layers": 1})
    inputs = bench.make_inputs(s, "cpu")
    one = dict(qkv=torch.empty(1, dtype=torch.bfloat16), part=torch.empty(1), count=torch.zeros(1, dtype=torch.int32))
    work = dict(one, att=one["qkv"], h=one["qkv"])
    args, consts = bench._kernel_args(s, inputs, inputs["residual"], work, inputs["layers"][0],
                                      torch.zeros(4, dtype=torch.int32), 132, bench.ENGINE_BLOCKS, bench.ALL, True)  # fmt: skip
    consts["EXACT"] = True  # as on a GPU (this process may run the interpreter's settings)
    options = {k: consts.pop(k) for k in ("num_warps", "num_stages")}
    kinds = {torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.int32: "*i32", torch.int64: "*i64"}
    types = [kinds[a.dtype] if isinstance(a, torch.Tensor) else "fp32" if isinstance(a, float) else "i32" for a in args]
    aligned = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) or (isinstance(a, int) and a % 16 == 0)]
    ptx = _ptx(bench._layer_kernel, dict(zip(bench._layer_kernel.arg_names, types, strict=False)), consts, aligned,
               options)  # fmt: skip
    assert ptx.count("atom.global.gpu.release.add") == 4  # the four waits, each one thread's add
    assert ptx.count("ld.volatile.global") == 4 and ptx.count("ld.global.gpu.acquire") == 4
    assert "cp.async.cg.shared.global" in ptx  # the products' loops are pipelined
