"""Would a decode step's products run faster if each kernel read its weights before the kernel ahead
of it had finished?

At a step's 64 rows each of a 1.1 B layer's products is a short kernel whose time is mostly its ramp
and tail (sessions 22-31, docs/benchmarks.md): on an H200 q/k/v 6.5 µs and output 6.1 µs for 10.5 and
8.4 MB, where the copy rate reads them in ~2.5 and ~2.0. Their weights do not depend on anything the
kernels ahead compute. Here each product is one Triton kernel launched early (programmatic dependent
launch: every program lets the next kernel start as soon as it itself has started) whose programs load
their whole slab of the weight, [KS inner, BN output columns], first, and only then wait for the kernel
ahead to finish (`griddepcontrol.wait`) and read their rows of the input. While one product computes,
the next one's programs that fit beside it are already streaming their weights.

Each program multiplies all 64 rows by its slab (fp32 sums); a product's inner dimension is split
among KS-sized slabs, each split leaves its part in memory and the last of a column block's splits to
finish (a count a block) sums them in split order (the same bits whichever is last) and writes the
block: stored (q/k/v), added into the residual (output, down), or SiLU(g · s) × (u · s) for the
gate/up product with s each row's RMS factor, summed from the same loads of the residual rows.

Printed, on 22 layers' weights (none of them in L2): µs for each product over the 22 weights in one
CUDA graph, torch's (cuBLAS) against each slab shape with and without early launches, and a chain of
22 layers' four products (and SiLU × up for torch) each way; the largest difference from torch's output.

    bash benchmarks/gpu_env.sh python3 -m benchmarks.prefetch_products
    TRITON_INTERPRET=1 python -m benchmarks.prefetch_products --check   # against torch, on the CPU

Session 32 (docs/benchmarks.md), one H100: far slower than cuBLAS. At 64-column blocks and 256-element
slabs, the fastest of those timed, q/k/v 12.2 µs against 7.3, output 9.5 against 6.4, down 27.9
against 11.3; a layer's chain 115.8 µs against torch's 80.9. The early launch helped these kernels
(q/k/v 13.9 → 12.2 µs, output 12.9 → 9.5) but not enough: Triton's loads of a whole slab into a
program's registers stream the weight at 20-29 % of the copy rate, where cuBLAS's reach 43-68 %. The
same kernels in the engine's folded steps (built, measured, removed) made whole 1.1 B generation runs
21.3 % of the copy rate against 51.4 %. The gate/up figure for torch includes this file's reference
RMS factor and SiLU in torch (several small kernels), not the engine's two kernels.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from benchmarks.l2_prefetch import SIZES  # noqa: E402
from benchmarks.product_layouts import product_shapes  # noqa: E402
from evaluation.engine.server import fused  # noqa: E402
from evaluation.engine.server.fused import libdevice  # noqa: E402

try:  # Triton ≥ 3.3: programmatic dependent launch
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover
    gdc_launch_dependents = gdc_wait = None

STORE, ADD, SILU = 0, 1, 2
EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class Config:
    bn: int  # output columns a program
    ks: int  # inner elements a program (a split)
    warps: int = 4


@triton.jit(do_not_specialize=["rows", "x_row"])
def _product_kernel(
    x_ptr, x_row, w_ptr, out_ptr, part_ptr, count_ptr, rows, inv_n, eps, N: tl.constexpr, K: tl.constexpr,
    M: tl.constexpr, BN: tl.constexpr, KS: tl.constexpr, MODE: tl.constexpr, PDL: tl.constexpr,
    EXACT: tl.constexpr,
):  # fmt: skip
    """x [rows, K] (row stride x_row) @ w [K, N] into out [rows, N] (SILU: w [K, 2N], gate columns
    then up; out [rows, N]); see the module's docstring."""
    block = tl.program_id(0)
    split = tl.program_id(1)
    SPLITS: tl.constexpr = K // KS
    W_N: tl.constexpr = 2 * N if MODE == 2 else N
    if PDL:
        gdc_launch_dependents()
    k = split * KS + tl.arange(0, KS)
    n = block * BN + tl.arange(0, BN)
    m = tl.arange(0, M)
    w = tl.load(w_ptr + k[:, None] * W_N + n[None, :])
    if MODE == 2:
        w_up = tl.load(w_ptr + k[:, None] * W_N + (N + n)[None, :])
    if PDL:
        gdc_wait()
    live = m < rows
    x = tl.load(x_ptr + m[:, None] * x_row + k[None, :], mask=live[:, None], other=0.0)
    acc = tl.dot(x, w)
    if MODE == 2:
        up = tl.dot(x, w_up)
        xf = x.to(tl.float32)
        squares = tl.sum(xf * xf, axis=1)
    done = SPLITS == 1
    if SPLITS > 1:
        PART_N: tl.constexpr = 2 * N if MODE == 2 else N
        at = part_ptr + m[:, None] * PART_N + n[None, :]
        sq_at = part_ptr + SPLITS * M * PART_N + block * M + m  # each block's splits' squares
        tl.store(at + split * M * PART_N, acc)
        if MODE == 2:
            tl.store(at + split * M * PART_N + N, up)
            tl.store(sq_at + split * tl.num_programs(0) * M, squares)
        tl.debug_barrier()  # every thread's stores before the release below
        done = tl.atomic_add(count_ptr + block, 1, sem="acq_rel") == SPLITS - 1
        if done:
            acc = tl.load(at, cache_modifier=".cg")
            for s in tl.static_range(1, SPLITS):
                acc += tl.load(at + s * M * PART_N, cache_modifier=".cg")
            if MODE == 2:
                up = tl.load(at + N, cache_modifier=".cg")
                squares = tl.load(sq_at, cache_modifier=".cg")
                for s in tl.static_range(1, SPLITS):
                    up += tl.load(at + s * M * PART_N + N, cache_modifier=".cg")
                    squares += tl.load(sq_at + s * tl.num_programs(0) * M, cache_modifier=".cg")
            tl.store(count_ptr + block, 0)  # ready for the next product
    if done:
        dt = out_ptr.dtype.element_ty
        out_at = out_ptr + m[:, None] * N + n[None, :]
        if MODE == 2:  # fused.silu_mul's arithmetic on the products' rounded outputs
            if EXACT:
                scale = libdevice.rsqrt(squares * inv_n + eps)[:, None]
            else:
                scale = tl.math.rsqrt(squares * inv_n + eps)[:, None]
            g = (acc.to(dt).to(tl.float32) * scale).to(dt).to(tl.float32)
            u = (up.to(dt).to(tl.float32) * scale).to(dt).to(tl.float32)
            if EXACT:
                s = tl.math.div_rn(g, 1.0 + libdevice.exp(-g))
            else:
                s = g / (1.0 + tl.exp(-g))
            acc = s.to(dt).to(tl.float32) * u
        elif MODE == 1:
            acc += tl.load(out_at, mask=live[:, None], other=0.0).to(tl.float32)
        tl.store(out_at, acc.to(dt), mask=live[:, None])


class Scratch:
    """The split parts and the column blocks' counts for one device, made before any capture and shared
    by every product: a product's parts are read by its own last programs, and the next product, which
    waits for it, writes none before."""

    def __init__(self, device: torch.device, widest_part: int, blocks: int):
        self.part = torch.empty(widest_part, device=device, dtype=torch.float32)
        self.count = torch.zeros(blocks, device=device, dtype=torch.int32)


def launch(scratch: Scratch, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, mode: int, config: Config,
           pdl: bool, eps: float = 0.0) -> torch.Tensor:  # fmt: skip
    """One product by `_product_kernel` under `config` (out = x @ w; ADD: out += it; SILU: SiLU × up),
    launched early where `pdl` (a GPU of compute capability 9 or more)."""
    rows, k = x.shape
    n = out.shape[1]
    _product_kernel[(n // config.bn, k // config.ks)](
        x, x.stride(0), w, out, scratch.part, scratch.count, rows, fused._fp32_reciprocal(k), eps,
        N=n, K=k, M=max(16, triton.next_power_of_2(rows)), BN=config.bn, KS=config.ks, MODE=mode, PDL=pdl,
        EXACT=not fused._INTERPRET, num_warps=config.warps, **({"launch_pdl": True} if pdl else {}),
    )  # fmt: skip
    return out


def wf_product(x, w, out, mode: int, scratch, bn: int, ks: int, warps: int, pdl: bool):
    launch(scratch, x, w, out, mode, Config(bn, ks, warps), pdl, EPS)


def scratch_for(device, table: dict, rows: int, bns, kss) -> Scratch:
    """The parts and counts the largest of `configs` asks for (`_product_kernel`'s layout)."""
    m = max(16, triton.next_power_of_2(rows))
    parts, blocks = 1, 1
    for k, n, mode in table.values():
        for bn, ks in configs((k, n, mode), bns, kss):
            splits, width = k // ks, (2 * n if mode == SILU else n)
            parts, blocks = max(parts, splits * m * width + splits * (n // bn) * m), max(blocks, n // bn)
    return Scratch(device, parts, blocks)


def label(params: tuple | None) -> str:
    """A timing's name: torch's, or a kernel's (bn, ks, warps, pdl)."""
    if params is None:
        return "torch"
    bn, ks, warps, pdl = params
    return f"bn={bn} ks={ks} warps={warps} pdl={int(pdl)}"


def torch_product(x, w, out, mode: int):
    if mode == STORE:
        torch.mm(x, w, out=out)
    elif mode == ADD:
        out.addmm_(x, w)
    else:
        inter = out.shape[1]
        gu = x @ w
        scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + EPS)
        g = (gu[:, :inter].float() * scale).to(x.dtype)
        u = (gu[:, inter:].float() * scale).to(x.dtype)
        out.copy_(fused.silu_mul(g, u))


def over_weights(product, weights, x, out, *rest) -> None:
    for w in weights:
        product(x, w, out, *rest)


def shapes(size: str) -> dict:
    """name: (K, N of the output, mode) of a folded step's four products, from the product benchmarks'
    table (`product_layouts.product_shapes`); SILU's weight has 2N columns."""
    table = product_shapes(size)
    modes = {"qkv": STORE, "o": ADD, "gate_up": SILU, "down": ADD}
    return {name: (table[name][1], table[name][0] // (2 if mode == SILU else 1), mode) for name, mode in modes.items()}


def weights_for(shape, layers: int, device, gen, dtype=torch.bfloat16) -> list[torch.Tensor]:
    k, n, mode = shape
    cols = 2 * n if mode == SILU else n
    return [(torch.randn(k, cols, generator=gen) * k**-0.5).to(device, dtype) for _ in range(layers)]


def configs(shape, bns, kss) -> list[tuple[int, int]]:
    k, n, mode = shape
    slabs = 2 if mode == SILU else 1
    return [(bn, ks) for bn, ks in itertools.product(bns, kss)
            if n % bn == 0 and k % ks == 0 and bn * ks * 2 * slabs <= 65536]  # fmt: skip


def check(args) -> int:
    """Each product's output against torch's (CPU under Triton's interpreter, in fp16: it computes bf16
    wrongly; or the GPU, in bf16)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float16
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    table = shapes(args.size)
    scratch = scratch_for(device, table, args.rows, args.bn, args.ks)
    for name, shape in table.items():
        k, n, mode = shape
        w = weights_for(shape, 1, device, gen, dtype)[0]
        x = torch.randn(args.rows, k, generator=gen).to(device, dtype)
        start = torch.randn(args.rows, n, generator=gen).to(device, dtype)
        want = start.clone()
        torch_product(x, w, want, mode)
        for bn, ks in configs(shape, args.bn, args.ks)[: args.check_configs]:
            got = start.clone()
            wf_product(x, w, got, mode, scratch, bn, ks, 4, False)
            diff = (got.float() - want.float()).abs().max().item()
            scale = want.float().abs().max().item()
            worst = max(worst, diff / scale)
            print(f"{name} bn={bn} ks={ks}: max diff {diff:.4g} (values up to {scale:.3g})", flush=True)
    print(f"worst relative difference {worst:.3g}")
    return 0 if worst < 0.02 else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1b", choices=sorted(SIZES))
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--bn", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--ks", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--replays", type=int, default=30)
    parser.add_argument("--check", action="store_true", help="outputs against torch's only")
    parser.add_argument("--check-configs", type=int, default=2)
    parser.add_argument("--out", default=None, help="a JSON file for the figures")
    args = parser.parse_args(argv)
    if args.check:
        return check(args)

    from benchmarks.gpu_ceilings import copy_rate
    from evaluation.engine.server.cuda_graphs import replayed_ms

    device = torch.device("cuda")
    rate = copy_rate(device)
    gen = torch.Generator().manual_seed(0)
    table = shapes(args.size)
    ws = {name: weights_for(shape, args.layers, device, gen) for name, shape in table.items()}
    scratch = scratch_for(device, table, args.rows, args.bn, args.ks)
    hidden = table["o"][1]
    h = (torch.randn(args.rows, hidden, generator=gen)).to(device, torch.bfloat16)
    bufs = {
        name: torch.zeros(args.rows, shape[1], device=device, dtype=torch.bfloat16) for name, shape in table.items()
    }
    attn = torch.randn(args.rows, hidden, generator=gen).to(device, torch.bfloat16)  # the attention's output
    inputs = {"qkv": h, "o": attn, "gate_up": h, "down": bufs["gate_up"]}
    results: dict = {"card": torch.cuda.get_device_name(device), "copy_rate": rate, "products": {}, "chains": {}}

    def us_per(run) -> float:
        return replayed_ms(run, args.replays)[0] * 1000 / args.layers

    best = {}
    for name, shape in table.items():
        k, n, mode = shape
        size = ws[name][0].numel() * 2
        x, out = inputs[name], (h.clone() if mode == ADD else bufs[name])
        rows = [(us_per(functools.partial(over_weights, torch_product, ws[name], x, out, mode)), None)]
        for (bn, ks), warps, pdl in itertools.product(configs(shape, args.bn, args.ks), args.warps, (True, False)):
            if pdl and gdc_wait is None:
                continue
            try:
                run = functools.partial(over_weights, wf_product, ws[name], x, out, mode, scratch, bn, ks, warps, pdl)
                t = us_per(run)
            except Exception as error:  # a shape Triton cannot compile (registers, shared memory)
                print(f"  {name} bn={bn} ks={ks} warps={warps} pdl={pdl}: {type(error).__name__}", flush=True)
                continue
            rows.append((t, (bn, ks, warps, pdl)))
        rows.sort(key=lambda r: r[0])
        torch_us = next(t for t, params in rows if params is None)
        print(
            f"{name} ({size / 1e6:.1f} MB): torch {torch_us:.2f} µs ({size / torch_us / 1e-6 / rate:.1%})", flush=True
        )
        for t, params in rows[:6]:
            print(f"  {label(params)}: {t:.2f} µs ({size / t / 1e-6 / rate:.1%})", flush=True)
        results["products"][name] = [(label(params), t) for t, params in rows]
        best[name] = next(params for _, params in rows if params is not None)

    marker = torch.zeros(64, device=device)

    def layer_chain(kind: str, picks: dict, boundary: bool = False):
        def run():
            for i in range(args.layers):
                for name, (_, _, mode) in table.items():
                    x, out = inputs[name], (h if mode == ADD else bufs[name])
                    if boundary and name == "o":  # a kernel launched the usual way, as the attention is
                        marker.add_(1.0)
                    if kind == "torch":
                        torch_product(x, ws[name][i], out, mode)
                    else:
                        wf_product(x, ws[name][i], out, mode, scratch, *picks[name])

        return run

    layer_bytes = sum(ws[name][0].numel() * 2 for name in table)
    t = us_per(layer_chain("torch", {}))
    print(f"layer chain, torch: {t:.2f} µs a layer ({layer_bytes / t / 1e-6 / rate:.1%})", flush=True)
    results["chains"]["torch"] = t
    for pdl in (True, False) if gdc_wait is not None else (False,):
        chosen = {name: (*p[:3], pdl) for name, p in best.items()}
        t = us_per(layer_chain("wf", chosen))
        print(f"layer chain, weights first, pdl={int(pdl)} {chosen}: {t:.2f} µs a layer "
              f"({layer_bytes / t / 1e-6 / rate:.1%})", flush=True)  # fmt: skip
        results["chains"][f"wf pdl={int(pdl)}"] = t
        if pdl:
            t = us_per(layer_chain("wf", chosen, boundary=True))
            print(f"  the same with a kernel launched the usual way before the output product: {t:.2f} µs a layer "
                  f"({layer_bytes / t / 1e-6 / rate:.1%})", flush=True)  # fmt: skip
            results["chains"]["wf pdl=1 boundary"] = t
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
