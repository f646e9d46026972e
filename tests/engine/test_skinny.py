"""skinny.py's kernels under Triton's interpreter (fp16: the interpreter rounds bf16 toward zero),
against fp32 products: split-K and not, row counts under and at the kernels' 64, sizes that no block
divides; and the gate/up product with SiLU × up against the two products then fused.silu_mul."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, torch
from evaluation.engine.server import fused, skinny
torch.manual_seed(0)
out = []
for rows, n, k, config in [(1, 96, 160, skinny.Config(32, 64, 1)), (17, 100, 200, skinny.Config(32, 64, 3)),
                           (50, 96, 256, skinny.Config(64, 64, 2)), (64, 40, 72, skinny.Config(32, 64, 2))]:
    x = torch.randn(rows, k, dtype=torch.float16)
    w = torch.randn(n, k, dtype=torch.float16) / k**0.5
    got = skinny.product(x, w, config)
    want = x.float() @ w.float().T
    out.append({"op": "product", "rows": rows, "split": config.split_k, "shape": list(got.shape),
                "dtype": str(got.dtype), "max_abs_diff": float((got.float() - want).abs().max()),
                "scale": float(want.abs().max())})
for rows, inter, k in [(3, 80, 128), (50, 96, 160)]:
    x = torch.randn(rows, k, dtype=torch.float16)
    w = torch.randn(2 * inter, k, dtype=torch.float16) / k**0.5
    got = skinny.gate_up_silu(x, w, skinny.Config(32, 64, 1))
    gate, up = (x.float() @ w.float().T).half().split(inter, dim=-1)  # the products rounded as cuBLAS's are
    want = fused.silu_mul_torch(gate.float(), up.float())
    out.append({"op": "gate_up_silu", "rows": rows, "shape": list(got.shape),
                "max_abs_diff": float((got.float() - want).abs().max()), "scale": float(want.abs().max())})
print(json.dumps({"checks": out, "triton_failed": fused._triton_failed}))
"""


def test_products_under_tritons_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["triton_failed"]
    products = [c for c in report["checks"] if c["op"] == "product"]
    assert [c["shape"] for c in products] == [[1, 96], [17, 100], [50, 96], [64, 40]]
    assert {c["split"] > 1 for c in products} == {True, False}
    # fp32 sums rounded once to fp16: within half a unit of fp16's last place at these magnitudes.
    assert all(c["dtype"] == "torch.float16" and c["max_abs_diff"] <= c["scale"] * 2**-10 for c in products), products
    # Each product rounded to fp16, then SiLU rounded, then the product rounded: a unit or two.
    silu = [c for c in report["checks"] if c["op"] == "gate_up_silu"]
    assert [c["shape"] for c in silu] == [[3, 80], [50, 96]]
    assert all(c["max_abs_diff"] <= c["scale"] * 2**-9 for c in silu), silu


STEP_SCRIPT = r"""
import json, torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from evaluation.engine.server import fused, skinny
config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
torch.manual_seed(0)
model = LlamaForCausalLM(config).half().eval()
assert fused.install(model)
calls = []
real = skinny.gate_up_silu
skinny.gate_up_silu = lambda *a: calls.append(a[0].shape) or real(*a)
ids = torch.randint(0, 300, (3, 6))
logits = {}
with torch.inference_mode(), fused.active(model):
    for on in (False, True):
        fused.gate_up_silu = on
        cache = DynamicCache()
        model(ids[:, :5], past_key_values=cache, use_cache=True)
        logits[on] = model(ids[:, 5:], past_key_values=cache, use_cache=True).logits.float()
print(json.dumps({"calls": [list(c) for c in calls], "max_abs_diff": float((logits[True] - logits[False]).abs().max()),
                  "scale": float(logits[False].abs().max()), "triton_failed": fused._triton_failed}))
"""


def test_a_decode_step_with_gate_up_and_silu_in_one_kernel_gives_the_two_kernels_logits():
    """ENGINE_GATE_UP_SILU: each layer's decode step (one token a row) calls the kernel, prefills do not,
    and the logits are the gate/up product then fused.silu_mul's within fp16 rounding."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "ENGINE_FUSED": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", STEP_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["triton_failed"]
    assert report["calls"] == [[3, 64], [3, 64]]  # the decode step's two layers only
    assert report["max_abs_diff"] <= report["scale"] * 2**-8, report
