"""A folded decode step's products as kernels that read their weights before the kernel ahead ends.

At a step's 64 rows each product of a 1.1 B layer is a short kernel whose time is mostly its ramp and
tail: on an H200 cuBLAS's q/k/v and output products take 6.5 and 6.1 µs for weights the copy rate reads
in 2.5 and 2.0 (docs/benchmarks.md, sessions 22-31). A weight does not depend on anything the kernels
ahead compute, so here each product is one Triton kernel launched early (programmatic dependent launch,
Hopper on): each program lets the next kernel start once it has itself started, loads its whole slab of
the weight, [KS inner, BN output columns], and only then waits for the kernel ahead
(`griddepcontrol.wait`) and reads its rows of the input. While one product computes, the next one's
programs that fit beside it already stream their weights (`benchmarks/prefetch_products.py`).

A program multiplies all the step's rows by its slab (fp32 sums). The inner dimension is split among
slabs; each split leaves its part in memory and the last of a column block's splits to finish (a count
a block) sums the parts in split order, so the bits do not depend on which is last, and finishes the
block: stores it (q/k/v), adds it into the residual (output, down; rounded once, as cuBLAS's beta = 1),
or for the gate/up product computes SiLU(g · s) × (u · s), s the row's RMS factor from the squares of
the same loads of the residual, as `fused.silu_mul` does after cuBLAS's product (so no SiLU kernel).

The values are the folded step's in another order of sums (the splits, and the squares by slab).
`ENGINE_EARLY_PRODUCTS=1` turns it on (off by default until measured on the GPU).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from evaluation.engine.server import fused
from evaluation.engine.server.switches import switch

STORE, ADD, SILU = 0, 1, 2
MAX_ROWS = 64


@dataclasses.dataclass(frozen=True)
class Config:
    bn: int  # output columns a program
    ks: int  # inner elements a program (a split)
    warps: int = 4


# By product, from benchmarks/prefetch_products.py on the GPU (see docs/benchmarks.md).
CONFIGS = {"qkv": Config(64, 256), "o": Config(64, 256), "gate_up": Config(64, 128), "down": Config(64, 256)}

if fused.triton is not None:
    import triton
    import triton.language as tl

    from evaluation.engine.server.fused import libdevice

    try:  # Triton ≥ 3.3: programmatic dependent launch
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    except ImportError:  # pragma: no cover
        gdc_launch_dependents = gdc_wait = None

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


def wanted() -> bool:
    return switch("ENGINE_EARLY_PRODUCTS", default="0") is True


def pdl_on(device: torch.device) -> bool:
    """Early launches: a GPU of compute capability 9 or more and a Triton that has them."""
    return (
        device.type == "cuda" and not fused._INTERPRET and gdc_wait is not None
        and torch.cuda.get_device_capability(device)[0] >= 9
    )  # fmt: skip


class Scratch:
    """The split parts and the column blocks' counts for one device, made before any capture and shared
    by every product: a product's parts are read by its own last programs, and the next product, which
    waits for it, writes none before."""

    def __init__(self, device: torch.device, widest_part: int, blocks: int, configs: dict | None = None):
        self.part = torch.empty(widest_part, device=device, dtype=torch.float32)
        self.count = torch.zeros(blocks, device=device, dtype=torch.int32)
        self.configs = configs or CONFIGS  # each product's, fitted to the model's shapes


def _divisor(size: int, most: int) -> int:
    """The largest power of two at most `most` that divides `size` (a small model's shapes)."""
    while most > 1 and size % most:
        most //= 2
    return most


def _needs(k: int, n: int, mode: int, config: Config) -> tuple[int, int]:
    """(fp32 elements of parts, column blocks) of one product."""
    splits, blocks = k // config.ks, n // config.bn
    width = 2 * n if mode == SILU else n
    return (splits * MAX_ROWS * width + splits * blocks * MAX_ROWS if splits > 1 else 0), blocks


def shapes(model: Any) -> dict[str, tuple[int, int, int]]:
    """The folded step's four products: name → (inner, output columns, mode)."""
    cfg = model.config
    hidden, inter = cfg.hidden_size, cfg.intermediate_size
    qkv = model.model.layers[0].self_attn._engine_joined.folded.shape[0]
    return {"qkv": (hidden, qkv, STORE), "o": (hidden, hidden, ADD), "gate_up": (hidden, inter, SILU),
            "down": (inter, hidden, ADD)}  # fmt: skip


def prepare(model: Any) -> bool:
    """Ready the early products for a folded model (`folded.fold` done): True where its steps will run
    them (the setting on, Triton usable, every product's shape divisible by its configuration)."""
    if not wanted() or fused.triton is None:
        return False
    param = next(model.parameters())
    if not fused._use_triton(param):
        return False
    configs = {}
    for name, (k, n, _) in shapes(model).items():
        config = CONFIGS[name]
        config = Config(_divisor(n, config.bn), _divisor(k, config.ks), config.warps)
        if min(config.bn, config.ks) < 16:
            return False
        configs[name] = config
    needs = [_needs(k, n, mode, configs[name]) for name, (k, n, mode) in shapes(model).items()]
    scratch = Scratch(param.device, max(p for p, _ in needs) or 1, max(b for _, b in needs), configs)
    for layer in model.model.layers:
        layer._engine_early = scratch
    return True


def active(layer: Any) -> Scratch | None:
    """The scratch of a layer whose steps run the early products (`prepare`), else None."""
    return getattr(layer, "_engine_early", None)


def product(scratch: Scratch, name: str, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, mode: int,
            eps: float = 0.0) -> torch.Tensor:  # fmt: skip
    """out = x @ w (ADD: out += it; SILU: SiLU × up of the folded gate/up product, `eps` the norm's)."""
    return launch(scratch, x, w, out, mode, scratch.configs[name], pdl_on(x.device), eps)


def launch(scratch: Scratch, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, mode: int, config: Config,
           pdl: bool, eps: float = 0.0) -> torch.Tensor:  # fmt: skip
    """`product` under a given configuration and launch (the benchmark's sweep)."""
    rows, k = x.shape
    n = out.shape[1]
    _product_kernel[(n // config.bn, k // config.ks)](
        x, x.stride(0), w, out, scratch.part, scratch.count, rows, fused._fp32_reciprocal(k), eps,
        N=n, K=k, M=max(16, triton.next_power_of_2(rows)), BN=config.bn, KS=config.ks, MODE=mode, PDL=pdl,
        EXACT=not fused._INTERPRET, num_warps=config.warps, **({"launch_pdl": True} if pdl else {}),
    )  # fmt: skip
    return out
