"""Does prefetching a decode step's next weights into L2 fill the gaps between its kernels?

A 1.1 B decode step at ~50 rows is ~200 kernels of a few microseconds: between and around the
products (norms, attention, SiLU × up, each launch's ramp and tail) the card's memory idles, and on an
H200 the step reaches ~41 % of the copy rate (docs/benchmarks.md, session 22). Here a chain of layers
shaped as the model's (the four products by cuBLAS, a norm, a stand-in for attention that reads a
row's keys and values, SiLU × up) runs as one CUDA graph, and the small kernels also ask L2 to fetch
weights that a later product reads (`cp.async.bulk.prefetch.L2`, or per-line `prefetch.global.L2`),
so the memory streams while they run. Printed: µs a layer, and the chain's bytes over its time as a
share of the copy rate, for each plan of what each kernel prefetches.

    bash benchmarks/gpu_env.sh python3 -m benchmarks.l2_prefetch --size 1b --rows 50

Session 23, one H100: without prefetches the chain ran 64.3 µs a layer, 50.4 % of the copy rate (a
whole run's 1.1 B steps: 51 %, so the chain stands for a real step); every plan with prefetches was
slower, 68.3–86.5 µs a layer (docs/benchmarks.md). The engine's version of it (`prefetch.py`,
`ENGINE_L2_PREFETCH`) is in commit f79dbd6 and was removed.

`--fold` adds the chain as the engine's folded steps run it (folded.py: no norm kernels; the
attention and SiLU × up scale each row by its RMS factor; the output and down products add into the
residual). Session 24, one H100, 50 rows: 59.9 µs a layer folded against 64.0 with the norms (54.0 %
against 50.6 %), at commit b95208b (the chain's own copy of the row's factor); session 25, with the
engine's `fused._row_scale`: 60.2 against 64.0. Session 25 also measured those two kernels launched
early (programmatic dependent launch, commit 2f99c4d's `--pdl`): 60.6 µs, no gain; removed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from benchmarks.fused_kernels import write_report  # noqa: E402
from benchmarks.gpu_ceilings import copy_rate  # noqa: E402
from evaluation.engine.server import fused  # noqa: E402
from evaluation.engine.server.cuda_graphs import replayed_ms  # noqa: E402

SIZES = {  # hidden, intermediate, heads, kv heads, layers (the benchmarks' Llama configs)
    "1b": (2048, 5632, 32, 4, 22),
    "7b": (4096, 11008, 32, 32, 32),
}


def head_dim(size: str) -> int:
    hidden, _, heads, _, _ = SIZES[size]
    return hidden // heads


@triton.jit
def _prefetch(pf_ptr, pf_bytes, programs, program, MODE: tl.constexpr, LANES: tl.constexpr = 128):
    """This program's share of [pf_ptr, pf_ptr + pf_bytes) asked of L2: a slice for each of its LANES
    threads (4 warps: one element a thread, no thread asking twice)."""
    lanes = tl.arange(0, LANES)
    share = tl.cdiv(tl.cdiv(pf_bytes, programs * LANES), 128) * 128  # bytes a lane, whole lines
    start = (program * LANES + lanes).to(tl.int64) * share
    size = tl.minimum(tl.maximum(pf_bytes - start, 0), share).to(tl.int32)
    base = pf_ptr.to(tl.pointer_type(tl.int8)) + start
    if MODE == 1:  # one bulk prefetch a lane
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.gt.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
            "=r,l,r", [base, size], dtype=tl.int32, is_pure=False, pack=1,
        )  # fmt: skip
    elif MODE == 2:  # the same, the lines kept ahead of others (evict_last)
        tl.inline_asm_elementwise(
            "{ .reg .pred p; .reg .b64 pol; setp.gt.s32 p, $2, 0; "
            "createpolicy.fractional.L2::evict_last.b64 pol, 1.0; "
            "@p cp.async.bulk.prefetch.L2.global.L2::cache_hint [$1], $2, pol; mov.u32 $0, 0; }",
            "=r,l,r", [base, size], dtype=tl.int32, is_pure=False, pack=1,
        )  # fmt: skip
    elif MODE == 3:  # a prefetch instruction a line
        for off in range(0, share, 128):
            tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.gt.s32 p, $2, 0; @p prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0; }",
                "=r,l,r", [base + off, size - off], dtype=tl.int32, is_pure=False, pack=1,
            )  # fmt: skip


@triton.jit
def _norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, n, pf_ptr, pf_bytes, BLOCK: tl.constexpr, MODE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    if MODE != 0:
        _prefetch(pf_ptr, pf_bytes, tl.num_programs(0), tl.program_id(0), MODE)
    cols = tl.arange(0, BLOCK)
    keep = cols < n
    x = tl.load(x_ptr + row * n + cols, mask=keep, other=0.0).to(tl.float32)
    x += tl.load(res_ptr + row * n + cols, mask=keep, other=0.0).to(tl.float32)
    tl.store(res_ptr + row * n + cols, x.to(res_ptr.dtype.element_ty), mask=keep)
    scale = tl.math.rsqrt(tl.sum(x * x, 0) / n + 1e-5)
    w = tl.load(w_ptr + cols, mask=keep, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n + cols, (x * scale * w).to(out_ptr.dtype.element_ty), mask=keep)


@triton.jit
def _silu_kernel(gu_ptr, out_ptr, inter, pf_ptr, pf_bytes, res_ptr, n, BLOCK: tl.constexpr, MODE: tl.constexpr,
                 FOLD: tl.constexpr = False, BLOCK_H: tl.constexpr = 1):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    if FOLD:  # the residual row, as the engine's kernel reads it
        scale = fused._row_scale(res_ptr, row, n, 1.0 / n, 1e-5, BLOCK_H, True)  # the engine's own
    if MODE != 0:
        _prefetch(pf_ptr, pf_bytes, tl.num_programs(0) * tl.num_programs(1),
                  tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), MODE)  # fmt: skip
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    keep = cols < inter
    g = tl.load(gu_ptr + row * 2 * inter + cols, mask=keep, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * 2 * inter + inter + cols, mask=keep, other=0.0).to(tl.float32)
    if FOLD:
        g, u = g * scale, u * scale
    tl.store(out_ptr + row * inter + cols, (g / (1.0 + tl.exp(-g)) * u).to(out_ptr.dtype.element_ty), mask=keep)


@triton.jit
def _attend_kernel(
    qkv_ptr, kv_ptr, out_ptr, qkv_row, cols, pf_ptr, pf_bytes, res_ptr, hidden,
    GROUP: tl.constexpr, DIM: tl.constexpr, BLOCK_N: tl.constexpr, MODE: tl.constexpr,
    FOLD: tl.constexpr = False, BLOCK_H: tl.constexpr = 1,
):  # fmt: skip
    """A stand-in for the step's attention: a (row, key/value head) program reads the row's keys and
    values (`cols` of them) and its queries, as the real kernel does, with simpler arithmetic."""
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    if MODE != 0:
        _prefetch(pf_ptr, pf_bytes, tl.num_programs(0) * tl.num_programs(1),
                  tl.program_id(0) * tl.num_programs(1) + head, MODE)  # fmt: skip
    kv_heads = tl.num_programs(1)
    d = tl.arange(0, DIM)
    g = tl.arange(0, GROUP)
    if FOLD:
        scale = fused._row_scale(res_ptr, row, hidden, 1.0 / hidden, 1e-5, BLOCK_H, True)
    q = tl.load(qkv_ptr + row * qkv_row + (head * GROUP + g[:, None]) * DIM + d[None, :]).to(tl.float32)
    if FOLD:
        q = q * scale
    acc = tl.zeros((DIM,), dtype=tl.float32)
    base = kv_ptr + ((row * kv_heads + head) * 2) * cols * DIM
    for c in range(0, cols, BLOCK_N):
        n = c + tl.arange(0, BLOCK_N)
        keep = n[:, None] < cols
        k = tl.load(base + n[:, None] * DIM + d[None, :], mask=keep, other=0.0).to(tl.float32)
        v = tl.load(base + cols * DIM + n[:, None] * DIM + d[None, :], mask=keep, other=0.0).to(tl.float32)
        acc += tl.sum(k * v, 0)
    tl.store(out_ptr + row * GROUP * kv_heads * DIM + (head * GROUP + g[:, None]) * DIM + d[None, :],
             (q + acc[None, :]).to(out_ptr.dtype.element_ty))  # fmt: skip


class Chain:
    def __init__(self, size: str, rows: int, cols: int, device: torch.device):
        hidden, inter, heads, kv_heads, layers = SIZES[size]
        self.shape = hidden, inter, heads, kv_heads, layers
        self.dim = dim = head_dim(size)
        self.rows, self.cols = rows, cols
        dt = torch.bfloat16
        scale = hidden**-0.5

        def w(*s):
            return (torch.randn(*s, device=device, dtype=dt) * scale).contiguous()

        qkv_n = (heads + 2 * kv_heads) * dim
        self.layers = [
            dict(
                qkv=w(qkv_n, hidden),
                o=w(hidden, heads * dim),
                gu=w(2 * inter, hidden),
                down=w(hidden, inter),
                n1=torch.ones(hidden, device=device, dtype=dt),
                n2=torch.ones(hidden, device=device, dtype=dt),
                kv=w(rows, kv_heads, 2, cols, dim),
            )  # fmt: skip
            for _ in range(layers)
        ]
        self.x = torch.randn(rows, hidden, device=device, dtype=dt)
        self.res = torch.zeros(rows, hidden, device=device, dtype=dt)
        self.bytes = sum(t.numel() * t.element_size() for layer in self.layers for t in layer.values())
        self.transposed: list[dict] | None = None  # run_folded(transposed=True)'s copies

    def run(self, plan: dict, mode: int, fold: bool = False) -> torch.Tensor:
        hidden, inter, heads, kv_heads, layers = self.shape
        rows = self.rows
        x, res = self.x, self.res
        blank = self.x  # a pointer for kernels that prefetch nothing

        def pf(at: str, i: int):
            name = plan.get(at)
            if not name or mode == 0:
                return blank, 0, 0
            target, which = name
            j = i + 1 if target == "next" else i
            if j >= layers:
                return blank, 0, 0
            t = self.layers[j][which]
            return t, t.numel() * t.element_size(), mode

        if fold:
            return self.run_folded()
        block_h = triton.next_power_of_2(hidden)
        for i, p in enumerate(self.layers):
            normed = torch.empty_like(x)
            t, b, m = pf("norm1", i)
            _norm_kernel[(rows,)](x, res, p["n1"], normed, hidden, t, b, BLOCK=block_h, MODE=m, num_warps=4)
            qkv = F.linear(normed, p["qkv"])
            att = torch.empty(rows, heads * self.dim, device=x.device, dtype=x.dtype)
            t, b, m = pf("attend", i)
            _attend_kernel[(rows, kv_heads)](qkv, p["kv"], att, qkv.stride(0), self.cols, t, b, res, hidden,
                                             GROUP=heads // kv_heads, DIM=self.dim, BLOCK_N=64, MODE=m, num_warps=4)  # fmt: skip
            o = F.linear(att, p["o"])
            normed = torch.empty_like(x)
            t, b, m = pf("norm2", i)
            _norm_kernel[(rows,)](o, res, p["n2"], normed, hidden, t, b, BLOCK=block_h, MODE=m, num_warps=4)
            gu = F.linear(normed, p["gu"])
            h = torch.empty(rows, inter, device=x.device, dtype=x.dtype)
            t, b, m = pf("silu", i)
            _silu_kernel[(rows, triton.cdiv(inter, 1024))](gu, h, inter, t, b, res, hidden, BLOCK=1024, MODE=m,
                                                           num_warps=4)  # fmt: skip
            x = F.linear(h, p["down"])
        return x

    def run_folded(self, transposed: bool = False) -> torch.Tensor:
        """The chain with its norms folded away (issue 8, session 24): each norm's weight is folded
        into the next product's columns, the products read the residual itself, and the kernels after
        them (attention, SiLU × up) scale their inputs by the row's 1/rms, computed from the residual
        row; the output and down products add into the residual (cuBLAS's beta = 1). Six kernels a
        layer instead of eight; the weights here are random, so only the time means anything.
        `transposed`: the products read copies stored [in, out] (benchmarks/product_layouts.py), made at the
        first such call (not counted in `bytes`)."""
        hidden, inter, heads, kv_heads, layers = self.shape
        rows, res = self.rows, self.x.clone()
        block_h = triton.next_power_of_2(hidden)
        if transposed and self.transposed is None:
            self.transposed = [{n: p[n].t().contiguous() for n in ("qkv", "o", "gu", "down")} for p in self.layers]
        # [in, out] operands: the copies, or views of the [out, in] weights
        operands = (
            self.transposed if transposed else [{n: p[n].t() for n in ("qkv", "o", "gu", "down")} for p in self.layers]
        )

        for p, t in zip(self.layers, operands, strict=True):
            qkv = res @ t["qkv"]
            att = torch.empty(rows, heads * self.dim, device=res.device, dtype=res.dtype)
            _attend_kernel[(rows, kv_heads)](qkv, p["kv"], att, qkv.stride(0), self.cols, res, 0, res, hidden,
                                             GROUP=heads // kv_heads, DIM=self.dim, BLOCK_N=64, MODE=0, FOLD=True,
                                             BLOCK_H=block_h, num_warps=4)  # fmt: skip
            res.addmm_(att, t["o"])
            gu = res @ t["gu"]
            h = torch.empty(rows, inter, device=res.device, dtype=res.dtype)
            _silu_kernel[(rows, triton.cdiv(inter, 1024))](gu, h, inter, res, 0, res, hidden, BLOCK=1024, MODE=0,
                                                           FOLD=True, BLOCK_H=block_h, num_warps=4)  # fmt: skip
            res.addmm_(h, t["down"])
        return res


PLANS = {
    "none": {},
    "qkv+o": {"silu": ("next", "qkv"), "norm1": ("this", "o")},
    "qkv+o+down": {"silu": ("next", "qkv"), "norm1": ("this", "o"), "norm2": ("this", "down")},
    "qkv+o+gu": {"silu": ("next", "qkv"), "norm1": ("this", "o"), "attend": ("this", "gu")},
    "all": {"silu": ("next", "qkv"), "norm1": ("this", "o"), "attend": ("this", "gu"), "norm2": ("this", "down")},
    "o+down": {"norm1": ("this", "o"), "norm2": ("this", "down")},
}


def timed(chain: Chain, plan: dict, mode: int, replays: int, fold: bool = False) -> float:
    """Seconds a replay of the chain captured as one CUDA graph."""
    ms, _ = replayed_ms(lambda: chain.run(plan, mode, fold), replays)
    return ms / 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1b", choices=sorted(SIZES))
    p.add_argument("--rows", type=int, nargs="+", default=[50])
    p.add_argument("--cols", type=int, default=200, help="keys and values a row attends to")
    p.add_argument("--replays", type=int, default=100)
    p.add_argument("--plans", nargs="+", default=list(PLANS))
    p.add_argument("--modes", type=int, nargs="+", default=[1, 2, 3], help="1 bulk, 2 bulk evict_last, 3 a line")
    p.add_argument("--fold", action="store_true", help="also the chain with its norms folded away (run_folded)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    device = torch.device("cuda")
    rate = copy_rate(device)  # the rate whole runs' shares are of
    results = []
    for rows in args.rows:
        chain = Chain(args.size, rows, args.cols, device)
        layers = chain.shape[-1]
        runs = [(name, mode) for name in args.plans for mode in ([0] if name == "none" else args.modes)]
        runs += [("folded", 0)] if args.fold else []
        for name, mode in runs:
            seconds = timed(chain, PLANS.get(name, {}), mode, args.replays, fold=name == "folded")
            share = chain.bytes / seconds / rate
            row = dict(rows=rows, plan=name, mode=mode, us_layer=seconds / layers * 1e6, share=share)
            results.append(row)
            print(
                f"rows {rows:3d}  {name:12s} mode {mode}  {row['us_layer']:6.1f} µs a layer  {share:6.1%}",
                flush=True,
            )
        del chain
        torch.cuda.empty_cache()
    write_report(args.out, copy_rate=rate, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
