"""Would a folded decode step's layer run faster as one persistent kernel than as its six kernels?

A folded 1.1 B decode step (evaluation/engine/server/folded.py) runs six kernels a layer: the q/k/v
product (cuBLAS), the attention (`decode_attention.rope_attend`), the output product adding into the
residual, the gate/up product, SiLU × up, the down product adding into the residual. At a step's 64
rows each kernel's launch, ramp and tail cost ~3-4 µs whatever it reads, so on an H200 the layer took
~50 µs for ~21 µs of weights at the copy rate (docs/benchmarks.md, sessions 26 and 29), and no faster
kernel for any one of the six was found (sessions 22, 23, 25, 29).

Here the same layer is one Triton kernel of as many programs as fit on the GPU at once, all resident,
which runs the five phases in turn and waits between them for every program to finish the phase before
(a count in memory each program adds to, then reads until it holds them all):

1. q/k/v: the residual rows times the folded weight, in blocks of output columns, each block's inner
   dimension split among programs (`SPLITS`): each split leaves its fp32 part in memory, and the last
   of a block's splits to finish (a count a block) sums them in order and writes the block;
2. the attention, a program a row and key/value head: `decode_attention.attend_program`, the engine's
   own (the row's RMS factor, the rotation, the cache write);
3. output: the attention's output times the weight, added into the residual (split as in 1);
4. gate/up: the residual times the folded weight, a block of gate columns and the same block of up
   columns a program, the row's RMS factor summed from the same loads, and SiLU × up in the epilogue;
5. down: SiLU × up times the weight, added into the residual (split as in 1).

The values are the engine's in another order of sums (the products' splits; the RMS factor of phase 4
summed in blocks). Printed, 22 layers' weights and caches (L2 holds none) as one CUDA graph each: µs a
layer for the engine's kernels (the whole layer and each half), for each phase alone, for each half
under each block shape and for the whole layer with each half's best; the largest difference from the
engine's output, from an fp32 run's and between two runs of the same inputs.

    bash benchmarks/gpu_env.sh python3 -m benchmarks.persistent_layer
    TRITON_INTERPRET=1 python -m benchmarks.persistent_layer --check   # the phases against the engine's layer, CPU

Session 30 (docs/benchmarks.md): slower than the engine's six kernels. On an H200, 68-81 µs a layer
against 53.5; on an H100 72.6 µs against 58.1, and each half alone slower than the engine's three
kernels for it (the attention's half 29.5 µs at best against 23.3, the MLP's 39.6 against 34.2):
Triton's products at 64 rows read their weights far slower than cuBLAS's (the q/k/v phase alone
13.9 µs against 6.8, down 20.4 against 11.3), which the waits saved between phases do not make up.
The MLP half's values differed between two runs of the same inputs (up to ~3 of 25) in most block
shapes, a race not yet found (`--squares apart`, not yet run, tests one guess); its timings stand.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from benchmarks.attention_configs import batch_layout  # noqa: E402
from evaluation.engine.server import decode_attention, fused  # noqa: E402

ALL = 0b11111  # the five phases' bits
ATTENTION_HALF, MLP_HALF = 0b00111, 0b11000


@triton.jit
def _grid_wait(sync_ptr, programs):
    """Every program of the grid has reached this point (all are resident: see `programs_that_fit`)."""
    tl.debug_barrier()  # every thread's stores before the release
    tl.atomic_add(sync_ptr, 1, sem="release")
    while tl.load(sync_ptr, volatile=True) < programs:
        pass
    tl.atomic_add(sync_ptr, 0, sem="acquire")
    tl.debug_barrier()


@triton.jit
def _product(x_ptr, x_row, w_ptr, w_k, w_n, out_ptr, out_row, part_ptr, count_ptr, N, K, pid, programs,
             M: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLITS: tl.constexpr, ADD: tl.constexpr):  # fmt: skip
    """out[:M, :N] = x[:M, :K] @ w (ADD: out += it), items pid, pid + programs, ... of its column blocks ×
    inner splits. A split's fp32 part goes to part_ptr [SPLITS, M, N]; the last of a block's splits to
    finish sums the parts in order (the same sums whichever is last)."""
    m = tl.arange(0, M)
    per = tl.cdiv(tl.cdiv(K, SPLITS), BK) * BK
    for item in range(pid, tl.cdiv(N, BN) * SPLITS, programs):
        block = item // SPLITS
        split = item % SPLITS
        n = block * BN + tl.arange(0, BN)
        lo = split * per
        acc = tl.zeros([M, BN], tl.float32)
        for k in range(lo, tl.minimum(K, lo + per), BK):
            kk = k + tl.arange(0, BK)
            x = tl.load(x_ptr + m[:, None] * x_row + kk[None, :], cache_modifier=".cg")
            w = tl.load(w_ptr + kk[:, None] * w_k + n[None, :] * w_n)
            acc = tl.dot(x, w, acc)
        out_at = out_ptr + m[:, None] * out_row + n[None, :]
        done = SPLITS == 1
        if SPLITS > 1:
            part_at = part_ptr + m[:, None] * N + n[None, :]
            tl.store(part_at + split * M * N, acc)
            tl.debug_barrier()
            done = tl.atomic_add(count_ptr + block, 1, sem="acq_rel") == SPLITS - 1
            if done:
                acc = tl.load(part_at, cache_modifier=".cg")
                for s in tl.static_range(1, SPLITS):
                    acc += tl.load(part_at + s * M * N, cache_modifier=".cg")
                tl.store(count_ptr + block, 0)  # ready for the next layer
        if done:
            if ADD:
                acc += tl.load(out_at, cache_modifier=".cg").to(tl.float32)
            tl.store(out_at, acc.to(out_ptr.dtype.element_ty))


@triton.jit
def _gate_up(x_ptr, x_row, w_ptr, w_k, w_n, h_ptr, inter, K, inv_n, eps, pid, programs,
             M: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SQUARES_APART: tl.constexpr):  # fmt: skip
    """h = SiLU(g · s) × (u · s), [g | u] = x @ w and s each row's RMS factor, summed from the same loads
    as the products (SQUARES_APART: from a pass of its own over the rows first)."""
    m = tl.arange(0, M)
    dt = h_ptr.dtype.element_ty
    for block in range(pid, tl.cdiv(inter, BN), programs):
        n = block * BN + tl.arange(0, BN)
        g = tl.zeros([M, BN], tl.float32)
        u = tl.zeros([M, BN], tl.float32)
        squares = tl.zeros([M], tl.float32)
        if SQUARES_APART:
            for k in range(0, K, BK):
                xf = tl.load(x_ptr + m[:, None] * x_row + (k + tl.arange(0, BK))[None, :], cache_modifier=".cg")
                xf = xf.to(tl.float32)
                squares += tl.sum(xf * xf, 1)
        for k in range(0, K, BK):
            kk = k + tl.arange(0, BK)
            x = tl.load(x_ptr + m[:, None] * x_row + kk[None, :], cache_modifier=".cg")
            if not SQUARES_APART:
                xf = x.to(tl.float32)
                squares += tl.sum(xf * xf, 1)
            w_at = w_ptr + kk[:, None] * w_k + n[None, :] * w_n
            g = tl.dot(x, tl.load(w_at), g)
            u = tl.dot(x, tl.load(w_at + inter * w_n), u)
        scale = tl.math.rsqrt(squares * inv_n + eps)[:, None]
        g = (g * scale).to(dt).to(tl.float32)
        u = (u * scale).to(dt).to(tl.float32)
        s = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
        tl.store(h_ptr + m[:, None] * inter + n[None, :], (s * u).to(dt))


@triton.jit
def _layer_kernel(
    res_ptr, w_qkv, w_o, w_gu, w_down, qkv_ptr, att_ptr, h_ptr, part_ptr, count_ptr, sync_ptr,
    k_cache, v_cache, bounds_ptr, col_ptr, cos_ptr, sin_ptr, k_row, k_head, cos_row, scale, inv_n, eps,
    hidden, qkv_n, att_n, inter, programs,
    M: tl.constexpr, HEADS: tl.constexpr, KV_HEADS: tl.constexpr, DIM: tl.constexpr, BLOCK_KV: tl.constexpr,
    G_PAD: tl.constexpr, BLOCK_H: tl.constexpr, EXACT: tl.constexpr, BK: tl.constexpr, BN_QKV: tl.constexpr,
    S_QKV: tl.constexpr, BN_O: tl.constexpr, S_O: tl.constexpr, BN_GU: tl.constexpr, BN_DOWN: tl.constexpr,
    S_DOWN: tl.constexpr, PHASES: tl.constexpr, WAIT: tl.constexpr, SQUARES_APART: tl.constexpr = False,
):  # fmt: skip
    """The docstring's phases whose bits PHASES holds (bit 0: q/k/v ... bit 4: down), in order; WAIT: a
    grid-wide wait after each but the last (Triton's interpreter runs programs one after another, so
    there a launch runs one phase and never waits)."""
    pid = tl.program_id(0)
    if PHASES & 1:
        _product(res_ptr, hidden, w_qkv, qkv_n, 1, qkv_ptr, qkv_n, part_ptr, count_ptr, qkv_n, hidden, pid,
                 programs, M, BN_QKV, BK, S_QKV, False)  # fmt: skip
        if WAIT and PHASES >> 1:
            _grid_wait(sync_ptr, programs)
    if PHASES & 2:
        GROUP: tl.constexpr = HEADS // KV_HEADS
        for item in range(pid, M * KV_HEADS, programs):
            decode_attention.attend_program(
                item // KV_HEADS, item % KV_HEADS, 0, qkv_ptr, k_cache, v_cache, bounds_ptr, col_ptr,
                att_ptr, att_ptr, att_ptr, qkv_n, DIM, k_row, k_head, k_row, k_head, att_n, DIM, HEADS, scale, 1,
                qkv_ptr + HEADS * DIM, qkv_ptr + (HEADS + KV_HEADS) * DIM, cos_ptr, sin_ptr, qkv_n, qkv_n, cos_row,
                res_ptr, hidden, inv_n, eps, GROUP, G_PAD, DIM, BLOCK_KV, True, True, EXACT, True, BLOCK_H,
            )  # fmt: skip
        if WAIT and PHASES >> 2:
            _grid_wait(sync_ptr + 1, programs)
    if PHASES & 4:
        _product(att_ptr, att_n, w_o, hidden, 1, res_ptr, hidden, part_ptr, count_ptr, hidden, att_n, pid,
                 programs, M, BN_O, BK, S_O, True)  # fmt: skip
        if WAIT and PHASES >> 3:
            _grid_wait(sync_ptr + 2, programs)
    if PHASES & 8:
        _gate_up(
            res_ptr, hidden, w_gu, 2 * inter, 1, h_ptr, inter, hidden, inv_n, eps, pid, programs, M, BN_GU, BK, EXACT
        )
        if WAIT and PHASES >> 4:
            _grid_wait(sync_ptr + 3, programs)
    if PHASES & 16:
        _product(h_ptr, inter, w_down, hidden, 1, res_ptr, hidden, part_ptr, count_ptr, hidden, inter, pid,
                 programs, M, BN_DOWN, BK, S_DOWN, True)  # fmt: skip


@dataclasses.dataclass
class Shape:
    hidden: int
    inter: int
    heads: int
    kv_heads: int
    dim: int
    layers: int
    rows: int
    columns: int

    @property
    def qkv_n(self) -> int:
        return (self.heads + 2 * self.kv_heads) * self.dim


SHAPES = {
    "1b": Shape(hidden=2048, inter=5632, heads=32, kv_heads=4, dim=64, layers=22, rows=64, columns=384),
    "tiny": Shape(hidden=256, inter=512, heads=4, kv_heads=2, dim=64, layers=2, rows=16, columns=96),
}
ENGINE_BLOCKS = dict(bk=64, bn_qkv=64, s_qkv=4, bn_o=64, s_o=4, bn_gu=64, bn_down=64, s_down=8, per_sm=1, warps=4,
                     stages=3, squares_apart=False)  # fmt: skip


def make_inputs(shape: Shape, device, dtype=torch.bfloat16, seed: int = 0) -> dict:
    """Random folded weights stored [in, out] (as the engine's steps read them), and a generation batch's
    caches midway (`attention_configs.batch_layout`)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    s = shape

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=gen) * scale).to(device=device, dtype=dtype)

    layers = [
        dict(qkv=randn(s.hidden, s.qkv_n, scale=s.hidden**-0.5), o=randn(s.heads * s.dim, s.hidden, scale=0.02),
             gu=randn(s.hidden, 2 * s.inter, scale=s.hidden**-0.5), down=randn(s.inter, s.hidden, scale=0.02),
             keys=randn(s.rows, s.kv_heads, s.columns, s.dim), values=randn(s.rows, s.kv_heads, s.columns, s.dim))
        for _ in range(s.layers)
    ]  # fmt: skip
    layout = batch_layout(s.rows, s.rows * 25 // 32, s.columns, s.dim, gen, device, dtype)  # 50 of 64 rows filled
    return dict(layout, layers=layers, residual=randn(s.rows, 1, s.hidden, scale=3.0), eps=1e-5)


def engine_step(shape: Shape, inputs: dict, device, phases: int = ALL) -> callable:
    """The engine's folded layers (folded.step_parts' six kernels on raw tensors), the attention's half
    (q/k/v, attention, output), the MLP's half or both as `phases` says; returns the residual."""
    s, i = shape, inputs
    work = decode_attention.Workspace(s.rows, s.heads, s.kv_heads, s.columns, s.dim, device, splits=1)
    res = i["residual"].clone()
    flat = res.view(s.rows, -1)

    def run():
        flat.copy_(i["residual"].view(s.rows, -1))
        for lw in i["layers"]:
            if phases & ATTENTION_HALF:
                qkv = (flat @ lw["qkv"]).view(s.rows, 1, -1)
                q, k, v = qkv.split([s.heads * s.dim, s.kv_heads * s.dim, s.kv_heads * s.dim], dim=-1)
                out = decode_attention.rope_attend(q, k, v, i["cos"], i["sin"], lw["keys"], lw["values"],
                                                   i["bounds"], i["column"], s.dim**-0.5, work,
                                                   scale_of=(res, i["eps"]))  # fmt: skip
                flat.addmm_(out.reshape(s.rows, -1), lw["o"])
            if phases & MLP_HALF:
                gate, up = (flat @ lw["gu"]).view(s.rows, 1, -1).split([s.inter, s.inter], dim=-1)
                act = fused.silu_mul(gate, up, scale_of=(res, i["eps"]))
                flat.addmm_(act.reshape(s.rows, -1), lw["down"])
        return res

    return run


def in_fp32(inputs: dict) -> dict:
    """The inputs in fp32 (a reference: the engine's layers run torch's operations there), caches copied."""

    def up(t):
        return t.float() if t.is_floating_point() else t

    layers = [{k: up(v).clone() for k, v in lw.items()} for lw in inputs["layers"]]
    return {k: up(v) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()} | dict(layers=layers)


def _kernel_args(shape: Shape, inputs: dict, res, work: dict, lw: dict, sync, programs: int, blocks: dict,
                 phases: int, wait: bool) -> tuple[tuple, dict]:  # fmt: skip
    s, i = shape, inputs
    keys = lw["keys"]
    args = (
        res, lw["qkv"], lw["o"], lw["gu"], lw["down"], work["qkv"], work["att"], work["h"], work["part"],
        work["count"], sync, keys, lw["values"], i["bounds"], i["column"], i["cos"], i["sin"], keys.stride(0),
        keys.stride(1), i["cos"].stride(0), s.dim**-0.5, fused._fp32_reciprocal(s.hidden), i["eps"], s.hidden,
        s.qkv_n, s.heads * s.dim, s.inter, programs,
    )  # fmt: skip
    b = blocks
    constants = dict(
        M=s.rows, HEADS=s.heads, KV_HEADS=s.kv_heads, DIM=s.dim, BLOCK_KV=decode_attention.BLOCK_N,
        G_PAD=max(16, triton.next_power_of_2(s.heads // s.kv_heads)), BLOCK_H=triton.next_power_of_2(s.hidden),
        EXACT=not fused._INTERPRET, BK=b["bk"], BN_QKV=b["bn_qkv"], S_QKV=b["s_qkv"], BN_O=b["bn_o"],
        S_O=b["s_o"], BN_GU=b["bn_gu"], BN_DOWN=b["bn_down"], S_DOWN=b["s_down"], PHASES=phases, WAIT=wait,
        SQUARES_APART=b["squares_apart"],
    )  # fmt: skip
    constants.update(num_warps=b["warps"], num_stages=b["stages"])
    return args, constants


def check_blocks(shape: Shape, blocks: dict) -> str | None:
    """Why these blocks do not divide the shape's products (None: they do)."""
    s, b = shape, blocks
    for name, n, k, bn, splits in (("qkv", s.qkv_n, s.hidden, b["bn_qkv"], b["s_qkv"]),
                                   ("o", s.hidden, s.heads * s.dim, b["bn_o"], b["s_o"]),
                                   ("gate/up", s.inter, s.hidden, b["bn_gu"], 1),
                                   ("down", s.hidden, s.inter, b["bn_down"], b["s_down"])):  # fmt: skip
        if n % bn or k % (splits * b["bk"]):
            return f"{name}: {n} columns in blocks of {bn}, {k} inner in {splits} splits of blocks of {b['bk']}"
    return None


def persistent_step(shape: Shape, inputs: dict, device, blocks: dict, phases: int = ALL,
                    programs: int | None = None, apart: bool = False) -> callable:  # fmt: skip
    """The layers as one persistent kernel each, running `phases` (`apart`: a launch a phase and no
    waits, as Triton's interpreter needs); returns the residual."""
    s, i = shape, inputs
    why = check_blocks(s, blocks)
    if why:
        raise ValueError(why)
    dt = i["residual"].dtype
    most_blocks = max(s.qkv_n // blocks["bn_qkv"], s.hidden // min(blocks["bn_o"], blocks["bn_down"]))
    most_splits = max(blocks["s_qkv"], blocks["s_o"], blocks["s_down"])
    work = dict(
        qkv=torch.empty(s.rows, s.qkv_n, device=device, dtype=dt),
        att=torch.empty(s.rows, s.heads * s.dim, device=device, dtype=dt),
        h=torch.empty(s.rows, s.inter, device=device, dtype=dt),
        part=torch.empty(most_splits * s.rows * max(s.qkv_n, s.hidden), device=device, dtype=torch.float32),
        count=torch.zeros(most_blocks, device=device, dtype=torch.int32),
    )
    sync = torch.zeros(s.layers, 4, device=device, dtype=torch.int32)
    launches = [1 << p for p in range(5) if phases >> p & 1] if apart else [phases]
    if programs is None:
        programs = programs_that_fit(shape, inputs, device, blocks, work, sync, launches)
    res = i["residual"].clone()

    def run():
        res.copy_(i["residual"])
        sync.zero_()
        for layer, lw in enumerate(i["layers"]):
            for launch in launches:
                args, constants = _kernel_args(s, i, res, work, lw, sync[layer], programs, blocks, launch, not apart)
                _layer_kernel[(programs,)](*args, **constants)
        return res

    run.programs = programs
    return run


def programs_that_fit(shape: Shape, inputs: dict, device, blocks: dict, work: dict, sync, launches: list[int]) -> int:
    """The SMs × `per_sm`, after checking that so many programs of each compiled kernel are resident at
    once (registers and shared memory): a program that waits for one never started would wait forever."""
    props = torch.cuda.get_device_properties(device)
    programs = props.multi_processor_count * blocks["per_sm"]
    threads = 32 * blocks["warps"]
    for phases in launches:
        args, constants = _kernel_args(shape, inputs, inputs["residual"], work, inputs["layers"][0], sync[0],
                                       programs, blocks, phases, len(launches) == 1)  # fmt: skip
        kernel = _layer_kernel.warmup(*args, **constants, grid=(programs,))
        kernel._init_handles()  # n_regs is known once the kernel is loaded
        by_registers = 65536 // max(1, kernel.n_regs * threads)
        shared_per_sm = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)
        by_shared = shared_per_sm // max(1, kernel.metadata.shared + 1024)
        fit = min(by_registers, by_shared, 2048 // threads)
        if fit < blocks["per_sm"]:
            raise ValueError(f"{blocks['per_sm']} programs an SM do not fit: {kernel.n_regs} registers a thread, "
                             f"{kernel.metadata.shared} bytes of shared memory, room for {fit}")  # fmt: skip
    return programs


def check(shape_name: str = "tiny") -> dict:
    """The phases a launch each (Triton's interpreter) against the engine's layers, on the CPU, in
    fp16 (the interpreter computes bf16 wrongly)."""
    decode_attention.everywhere = True
    shape = SHAPES[shape_name]
    inputs = make_inputs(shape, "cpu", torch.float16)
    blocks = dict(ENGINE_BLOCKS, bk=32, bn_qkv=32, s_qkv=2, bn_o=32, s_o=2, bn_gu=32, bn_down=32, s_down=4)
    out = {}
    for name, phases, apart in (("all", ALL, False), ("attention half", ATTENTION_HALF, False),
                                ("mlp half", MLP_HALF, False), ("mlp half, squares apart", MLP_HALF, True)):  # fmt: skip
        want = engine_step(shape, inputs, "cpu", phases)().float()
        # the engine's layers wrote the step's keys and values: the persistent ones write the same again
        got = persistent_step(shape, inputs, "cpu", dict(blocks, squares_apart=apart), phases, programs=3,
                              apart=True)().float()  # fmt: skip
        out[name] = dict(max_abs_diff=(got - want).abs().max().item(), largest=want.abs().max().item(),
                         finite=bool(torch.isfinite(got).all()))  # fmt: skip
    return out


def attention_configs(bns, splits, per_sm) -> list[dict]:
    """The q/k/v and output products' blocks and splits (the same for both)."""
    return [dict(ENGINE_BLOCKS, bn_qkv=bn, s_qkv=sp, bn_o=bn, s_o=sp, per_sm=ps)
            for bn, sp, ps in itertools.product(bns, splits, per_sm)]  # fmt: skip


def mlp_configs(bns, downs, per_sm, squares_apart=(False,)) -> list[dict]:
    """The gate/up product's blocks, the down product's (blocks, splits), where the RMS factor is summed."""
    return [dict(ENGINE_BLOCKS, bn_gu=bn, bn_down=down[0], s_down=down[1], per_sm=ps, squares_apart=apart)
            for bn, down, ps, apart in itertools.product(bns, downs, per_sm, squares_apart)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="the phases against the engine's layers on the CPU")
    p.add_argument("--size", default="1b", choices=sorted(SHAPES))
    p.add_argument("--bn", type=int, nargs="+", default=[32, 64, 128], help="the products' column blocks")
    p.add_argument("--splits", type=int, nargs="+", default=[1, 2, 4, 8], help="q/k/v's and output's")
    p.add_argument("--downs", nargs="+", default=["64x4", "64x8", "128x4", "128x8", "32x4"],
                   help="the down product's BLOCKxSPLITS")  # fmt: skip
    p.add_argument("--per-sm", type=int, nargs="+", default=[1, 2])
    p.add_argument("--squares", nargs="+", choices=["with", "apart"], default=["with"],
                   help="the gate/up phase's RMS factor summed with the products' loads, or in a pass of its own")  # fmt: skip
    p.add_argument("--replays", type=int, default=30)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.check:
        print(json.dumps(check()))
        return 0
    from benchmarks.fused_kernels import write_report
    from evaluation.engine.server.cuda_graphs import replayed_ms

    device = torch.device("cuda")
    shape = SHAPES[args.size]
    inputs = make_inputs(shape, device)
    decode_attention.everywhere = True  # fp32: the torch operations
    reference = engine_step(shape, in_fp32(inputs), device)().clone()
    decode_attention.everywhere = False
    rows, engine = [], {}

    def report(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    for name, phases in (("all", ALL), ("attention half", ATTENTION_HALF), ("mlp half", MLP_HALF)):
        ms, out = replayed_ms(engine_step(shape, inputs, device, phases), args.replays)
        engine[phases] = out.float().clone()
        row = dict(kernel="engine", phases=name, us_layer=ms * 1e3 / shape.layers)
        if phases == ALL:
            row["fp32_max_abs_diff"] = (engine[ALL] - reference).abs().max().item()
        report(row)

    def persistent(phases: int, blocks: dict, name: str) -> dict:
        row = dict(kernel="persistent", phases=name, **blocks)
        try:
            run = persistent_step(shape, inputs, device, blocks, phases)
            ms, out = replayed_ms(run, args.replays)
            got = out.float().clone()
            row.update(programs=run.programs, us_layer=ms * 1e3 / shape.layers,
                       repeat_max_abs_diff=(run().float() - got).abs().max().item())  # fmt: skip
            if phases in engine:
                row["max_abs_diff"] = (got - engine[phases]).abs().max().item()
            if phases == ALL:
                row["fp32_max_abs_diff"] = (got - reference).abs().max().item()
        except Exception as exc:  # blocks that do not divide the shape or do not fit
            row["failed"] = f"{type(exc).__name__}: {exc}"[:300]
        report(row)
        return row

    for p_ in range(5):  # each phase alone (its inputs need not be a real layer's: timing only)
        persistent(1 << p_, dict(ENGINE_BLOCKS), f"phase {p_ + 1} alone")
    downs = [tuple(int(x) for x in d.split("x")) for d in args.downs]
    best = {}
    for phases, configs in ((ATTENTION_HALF, attention_configs(args.bn, args.splits, args.per_sm)),
                            (MLP_HALF, mlp_configs(args.bn, downs, args.per_sm, [w == "apart" for w in args.squares]))):  # fmt: skip
        name = "attention half" if phases == ATTENTION_HALF else "mlp half"
        done = [persistent(phases, blocks, name) for blocks in configs]
        best[phases] = min((r for r in done if "us_layer" in r), key=lambda r: r["us_layer"], default=None)
    if all(best.values()):
        keys = ENGINE_BLOCKS.keys()
        attention, mlp = ({k: best[h][k] for k in keys} for h in (ATTENTION_HALF, MLP_HALF))
        for per_sm in args.per_sm:
            blocks = dict(mlp, bn_qkv=attention["bn_qkv"], s_qkv=attention["s_qkv"], bn_o=attention["bn_o"],
                          s_o=attention["s_o"], per_sm=per_sm)  # fmt: skip
            persistent(ALL, blocks, "all, each half's best")
    write_report(args.out, largest=engine[ALL].abs().max().item(), results=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
