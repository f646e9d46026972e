"""The early products (early_products.py): a folded decode step's four products as kernels that load
their weights before they wait for the kernel ahead. Under Triton's interpreter (fp16) against torch's
products and in whole folded decode steps; compiled for an H100/H200, the early launch's order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluation.engine.server import early_products

ROOT = Path(__file__).resolve().parents[2]


def _interpreted(*argv: str, **env: str) -> subprocess.CompletedProcess:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def test_each_product_equals_torchs_under_the_interpreter():
    """q/k/v (stored), output and down (added into the residual), gate/up with SiLU × up and the rows'
    RMS factor, each split in K and summed by the last split, for 24 rows of a 64-row block."""
    proc = _interpreted("benchmarks.prefetch_products", "--check", "--rows", "24", "--check-configs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert sum(" max diff " in line for line in lines) == 4
    worst = float(lines[-1].rsplit(" ", 1)[1])
    assert 0 < worst < 2e-3  # fp16 products of 2,048-5,632 terms summed in another order


def test_folded_steps_give_the_same_tokens_with_the_early_products():
    proc = _interpreted("tests.engine.early_run", ENGINE_FUSED="1", ENGINE_FOLD_NORMS="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    early, plain = report["early"], report["plain"]
    assert early["folded"] and plain["folded"]
    assert plain["launches"] == []
    # Every step's layer: q/k/v stored, output added, gate/up with SiLU, down added.
    steps = len(early["launches"]) // 4
    assert steps > 0 and early["launches"] == [0, 1, 2, 1] * steps
    assert early["tokens"] == plain["tokens"]


def _ptx(pdl: bool) -> str:
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {"x_ptr": "*bf16", "x_row": "i32", "w_ptr": "*bf16", "out_ptr": "*bf16", "part_ptr": "*fp32",
           "count_ptr": "*i32", "rows": "i32", "inv_n": "fp32", "eps": "fp32"}  # fmt: skip
    consts = dict(N=2560, K=2048, M=64, BN=64, KS=256, MODE=early_products.STORE, PDL=pdl, EXACT=True)
    source = ASTSource(fn=early_products._product_kernel, signature=sig | dict.fromkeys(consts, "constexpr"),
                       constexprs=consts, attrs={(i,): [["tt.divisibility", 16]] for i in (0, 2, 3, 4, 5)})  # fmt: skip
    try:
        return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
    except (ImportError, FileNotFoundError) as e:  # pragma: no cover - a Triton without its CUDA tool chain
        pytest.skip(f"cannot compile for CUDA here: {e}")


def test_an_early_launch_loads_its_weights_before_it_waits():
    ptx = _ptx(pdl=True)
    trigger, wait = ptx.index("griddepcontrol.launch_dependents"), ptx.index("griddepcontrol.wait")
    assert trigger < wait
    # The slab's loads (16 B each: 256 x 64 bf16 over 128 threads, 16 a thread) before the wait.
    assert ptx[:wait].count("ld.global") >= 16
    assert "griddepcontrol" not in _ptx(pdl=False)


def test_an_early_attention_loads_the_cached_keys_before_it_waits_and_the_query_after():
    """The attention after the q/k/v product (`rope_attend(early=True)`): the row's bounds and its first
    block of cached keys and values (earlier steps') before the wait, the projections and residual after."""
    from evaluation.engine.server import decode_attention
    from tests.engine.test_fused import _attend, _attend_signature
    from tests.engine.test_fused import _ptx as compiled

    consts = _attend(8, 64, True, True, scaled=True)
    early = compiled(decode_attention._attend_kernel, _attend_signature(), consts | {"EARLY": True})
    trigger, wait = early.index("griddepcontrol.launch_dependents"), early.index("griddepcontrol.wait")
    before = early[:wait].count("ld.global")
    assert trigger < wait and before >= 5  # three bounds, the column, the keys and values
    plain = compiled(decode_attention._attend_kernel, _attend_signature(), consts)
    assert "griddepcontrol" not in plain
    assert early.count("ld.global") == plain.count("ld.global")  # the same loads, some earlier


def test_prepare_only_with_the_setting_and_a_kernel_device(tiny_llama_dir, monkeypatch):
    from evaluation.engine.loading import load_model
    from evaluation.engine.server import folded, fused

    monkeypatch.setenv("ENGINE_FUSED", "1")
    monkeypatch.setenv("ENGINE_FOLD_NORMS", "1")
    model = load_model(tiny_llama_dir, device="cpu", dtype="float32").model
    assert fused.install(model) and folded.fold(model)
    layer = model.model.layers[0]
    assert early_products.active(layer) is None  # off by default
    monkeypatch.setenv("ENGINE_EARLY_PRODUCTS", "1")
    assert not early_products.prepare(model)  # fp32 on the CPU: no kernel
    monkeypatch.setattr(fused, "_use_triton", lambda x: True)
    assert early_products.prepare(model)
    scratch = early_products.active(layer)
    hidden, inter = model.config.hidden_size, model.config.intermediate_size
    # The tiny model's shapes: each block and split the largest power of two that divides them.
    assert scratch.configs["down"] == early_products.Config(min(64, hidden), min(256, inter))
    assert early_products._divisor(5632, 256) == 256 and early_products._divisor(2560, 128) == 128
    assert early_products._divisor(96, 64) == 32


def test_early_launches_only_on_hopper_with_a_triton_that_has_them(monkeypatch):
    assert not early_products.pdl_on(torch.device("cpu"))
    if early_products.gdc_wait is None or early_products.fused._INTERPRET:
        return
    for capability, expected in (((8, 0), False), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        assert early_products.pdl_on(torch.device("cuda", 0)) == expected
