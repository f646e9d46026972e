"""benchmarks/l2_prefetch.py measures what it says: its kernels hold the prefetch each mode names (PTX
for an H100/H200, compiled here: the interpreter cannot run inline PTX), and every plan names a kernel
of the chain and a weight of a layer."""

from benchmarks import l2_prefetch as bench
from tests.engine.test_fused import _ptx

NORM = {"x_ptr": "*bf16", "res_ptr": "*bf16", "w_ptr": "*bf16", "out_ptr": "*bf16", "n": "i32", "pf_ptr": "*bf16",
        "pf_bytes": "i64"}  # fmt: skip


def _norm_ptx(mode: int) -> str:
    return _ptx(bench._norm_kernel, NORM, {"BLOCK": 2048, "MODE": mode})


def test_each_mode_compiles_the_prefetch_it_names():
    ptx = {mode: _norm_ptx(mode) for mode in (0, 1, 2, 3)}
    assert "prefetch" not in ptx[0].replace("l2_prefetch.py", "")
    assert "cp.async.bulk.prefetch.L2.global [" in ptx[1] and "evict_last" not in ptx[1]
    assert "cp.async.bulk.prefetch.L2.global.L2::cache_hint" in ptx[2] and "evict_last" in ptx[2]
    assert "prefetch.global.L2::evict_last" in ptx[3] and "cp.async.bulk" not in ptx[3]


def test_every_plan_names_a_kernel_and_a_weight():
    kernels, weights = {"norm1", "attend", "norm2", "silu"}, {"qkv", "o", "gu", "down"}
    assert bench.PLANS["none"] == {}
    for plan in bench.PLANS.values():
        for kernel, (layer, weight) in plan.items():
            assert kernel in kernels and layer in ("this", "next") and weight in weights


def test_the_folded_chains_kernels_compile():
    """--fold: SiLU × up and the attention stand-in scale by the row's factor (the engine's _row_scale)."""
    silu = {"gu_ptr": "*bf16", "out_ptr": "*bf16", "inter": "i32", "pf_ptr": "*bf16", "pf_bytes": "i64",
            "res_ptr": "*bf16", "n": "i32"}  # fmt: skip
    assert ".entry" in _ptx(bench._silu_kernel, silu, {"BLOCK": 1024, "MODE": 0, "FOLD": True, "BLOCK_H": 2048})
