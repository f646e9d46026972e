"""Matrix products of a decode step's few rows (y = x Wᵀ, x [rows ≤ 64, K], W [N, K]), written for
the weights' bandwidth: at ~50 rows a step's products read 2.2 GB of 1.1 B weights, and cuBLAS's
kernels for the small ones (query/key/value, output: 8–10 MB) ran at ~1.5 TB/s of the card's ~3
(session 13's profile, docs/benchmarks.md).

Each program reads a [BLOCK_N, K / SPLIT_K] slab of W once and multiplies it by all the rows of x
(tensor cores, fp32 sums), writing fp32 partial sums; a second kernel adds the SPLIT_K partials in
a fixed order (no atomics: the same inputs give the same bits every time) and rounds to the
weights' dtype, as cuBLAS rounds its output. With SPLIT_K = 1 the first kernel writes the output.

Triton on CUDA (and under Triton's interpreter, for the tests); `product_torch` elsewhere.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from evaluation.engine.server import fused

ROWS = 64  # the most rows these kernels take: a decode step's batch (static_decode.STANDING_ROWS)

if fused.triton is not None:
    import triton
    import triton.language as tl

    from evaluation.engine.server.fused import libdevice

    try:  # Triton ≥ 3.3: programmatic dependent launch (the next kernel starts before this one ends)
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    except ImportError:  # pragma: no cover
        gdc_launch_dependents = gdc_wait = None

    @triton.jit(do_not_specialize=["rows", "x_row"])
    def _partial_kernel(
        x_ptr, w_ptr, out_ptr, rows, x_row, N: tl.constexpr, K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
        PDL: tl.constexpr,
    ):  # fmt: skip
        n0 = tl.program_id(0) * BLOCK_N
        split = tl.program_id(1)
        chunks: tl.constexpr = (K + BLOCK_K - 1) // BLOCK_K
        per_split: tl.constexpr = (chunks + SPLIT_K - 1) // SPLIT_K
        m = tl.arange(0, BLOCK_M)
        n = n0 + tl.arange(0, BLOCK_N)
        kk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        first = split * per_split
        if PDL:
            # The weights do not depend on the kernel before: read the first slab while it ends.
            k = first * BLOCK_K + kk
            w = tl.load(w_ptr + n[:, None] * K + k[None, :], mask=(n[:, None] < N) & (k[None, :] < K), other=0.0)
            gdc_wait()
            gdc_launch_dependents()
            x = tl.load(x_ptr + m[:, None] * x_row + k[None, :], mask=(m[:, None] < rows) & (k[None, :] < K), other=0.0)
            acc += tl.dot(x, tl.trans(w))
            first += 1
        for c in range(first, tl.minimum((split + 1) * per_split, chunks)):
            k = c * BLOCK_K + kk
            x = tl.load(x_ptr + m[:, None] * x_row + k[None, :], mask=(m[:, None] < rows) & (k[None, :] < K), other=0.0)
            w = tl.load(w_ptr + n[:, None] * K + k[None, :], mask=(n[:, None] < N) & (k[None, :] < K), other=0.0)
            acc += tl.dot(x, tl.trans(w))
        keep = (m[:, None] < rows) & (n[None, :] < N)
        if SPLIT_K == 1:
            tl.store(out_ptr + m[:, None] * N + n[None, :], acc.to(out_ptr.dtype.element_ty), mask=keep)
        else:
            tl.store(out_ptr + split * rows * N + m[:, None] * N + n[None, :], acc, mask=keep)

    @triton.jit(do_not_specialize=["rows", "x_row"])
    def _gate_up_kernel(
        x_ptr, w_ptr, out_ptr, rows, x_row, INTER: tl.constexpr, K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr, EXACT: tl.constexpr,
    ):  # fmt: skip
        """SiLU(x Wgᵀ) × (x Wuᵀ) for W = [Wg; Wu] (a joined gate/up weight): each program's columns of
        both products, rounded as the products' outputs are, then fused.silu_mul's arithmetic."""
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        m = tl.arange(0, BLOCK_M)
        kk = tl.arange(0, BLOCK_K)
        gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
        for c in range(0, (K + BLOCK_K - 1) // BLOCK_K):
            k = c * BLOCK_K + kk
            keep_w = (n[:, None] < INTER) & (k[None, :] < K)
            x = tl.load(x_ptr + m[:, None] * x_row + k[None, :], mask=(m[:, None] < rows) & (k[None, :] < K), other=0.0)
            wg = tl.load(w_ptr + n[:, None] * K + k[None, :], mask=keep_w, other=0.0)
            wu = tl.load(w_ptr + (INTER + n[:, None]) * K + k[None, :], mask=keep_w, other=0.0)
            gate += tl.dot(x, tl.trans(wg))
            up += tl.dot(x, tl.trans(wu))
        dt = out_ptr.dtype.element_ty
        g = gate.to(dt).to(tl.float32)
        u = up.to(dt).to(tl.float32)
        if EXACT:  # as fused._silu_mul_kernel: CUDA's expf and an IEEE division
            s = tl.math.div_rn(g, 1.0 + libdevice.exp(-g))
        else:
            s = g / (1.0 + tl.exp(-g))
        s = s.to(dt).to(tl.float32)
        keep = (m[:, None] < rows) & (n[None, :] < INTER)
        tl.store(out_ptr + m[:, None] * INTER + n[None, :], (s * u).to(dt), mask=keep)

    @triton.jit(do_not_specialize=["rows"])
    def _reduce_kernel(
        part_ptr, out_ptr, rows, N: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr
    ):
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
        row = tl.program_id(0)
        n = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        keep = n < N
        total = tl.load(part_ptr + row * N + n, mask=keep, other=0.0)
        for s in range(1, SPLIT_K):
            total += tl.load(part_ptr + s * rows * N + row * N + n, mask=keep, other=0.0)
        tl.store(out_ptr + row * N + n, total.to(out_ptr.dtype.element_ty), mask=keep)


@dataclasses.dataclass(frozen=True)
class Config:
    block_n: int
    block_k: int
    split_k: int
    warps: int = 4
    stages: int = 3
    pdl: bool = False  # programmatic dependent launch (not under Triton's interpreter)

    def programs(self, n: int) -> int:
        return -(-n // self.block_n) * self.split_k


# The decode step's gate/up + SiLU kernel (fused.layer_parts, ENGINE_GATE_UP_SILU): 32 columns of SiLU × up
# a program (both products' weights for them), 128 of the weights' columns a load.
GATE_UP = Config(32, 128, 1, 4, 4)


def pdl_possible() -> bool:
    return fused.triton is not None and gdc_wait is not None and not fused._INTERPRET


def product_torch(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x, weight)


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        fused._use_triton(x) and x.dim() == 2 and 0 < x.shape[0] <= ROWS and x.stride(1) == 1
        and weight.is_contiguous() and weight.dtype == x.dtype and weight.shape[1] == x.shape[1]
    )  # fmt: skip


def product(x: torch.Tensor, weight: torch.Tensor, config: Config) -> torch.Tensor:
    """x [rows, K] @ weight [N, K]ᵀ → [rows, N] in x's dtype (see the module's docstring)."""
    if not applies(x, weight):
        return product_torch(x, weight)
    rows, k = x.shape
    n = weight.shape[0]
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    split = config.split_k
    part = out if split == 1 else torch.empty(split, rows, n, dtype=torch.float32, device=x.device)
    pdl = config.pdl and pdl_possible()
    pdl_launch = {"launch_pdl": True} if pdl else {}

    def launch():
        _partial_kernel[(triton.cdiv(n, config.block_n), split)](
            x, weight, part, rows, x.stride(0), N=n, K=k, BLOCK_M=max(16, triton.next_power_of_2(rows)),
            BLOCK_N=config.block_n, BLOCK_K=config.block_k, SPLIT_K=split, PDL=pdl,
            num_warps=config.warps, num_stages=config.stages, **pdl_launch,
        )  # fmt: skip
        if split > 1:
            block = 1024
            _reduce_kernel[(rows, triton.cdiv(n, block))](
                part, out, rows, N=n, SPLIT_K=split, BLOCK=block, PDL=pdl, num_warps=4, **pdl_launch
            )
        return out

    return fused._run_kernel(launch, lambda: product_torch(x, weight))


def gate_up_silu_torch(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(x, weight).chunk(2, dim=-1)
    return fused.silu_mul_torch(gate, up)


def gate_up_silu(x: torch.Tensor, weight: torch.Tensor, config: Config) -> torch.Tensor:
    """SiLU(x Wgᵀ) × (x Wuᵀ) [rows, inter] for a joined weight [Wg; Wu] [2 × inter, K]: a decode step's
    gate and up products and fused.silu_mul in one kernel (the products' columns never leave it)."""
    if not applies(x, weight) or weight.shape[0] % 2:
        return gate_up_silu_torch(x, weight)
    rows, k = x.shape
    inter = weight.shape[0] // 2
    out = torch.empty(rows, inter, dtype=x.dtype, device=x.device)
    pdl = config.pdl and pdl_possible()

    def launch():
        _gate_up_kernel[(triton.cdiv(inter, config.block_n),)](
            x, weight, out, rows, x.stride(0), INTER=inter, K=k, BLOCK_M=max(16, triton.next_power_of_2(rows)),
            BLOCK_N=config.block_n, BLOCK_K=config.block_k, PDL=pdl, EXACT=not fused._INTERPRET,
            num_warps=config.warps, num_stages=config.stages, **({"launch_pdl": True} if pdl else {}),
        )  # fmt: skip
        return out

    return fused._run_kernel(launch, lambda: gate_up_silu_torch(x, weight))
