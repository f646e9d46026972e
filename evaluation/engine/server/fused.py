"""Decoder layers with fused elementwise kernels, for the engine's own forwards on a GPU.

Hugging Face's Llama-style layer spends most kernels of a forward on elementwise work: RMSNorm is
eight kernels (to fp32, square, mean, add, rsqrt, multiply, back to the weights' dtype, multiply),
rotary embeddings a dozen for queries and keys, SiLU and the gate's product two more, and the
queries, keys and values are three matrix products over the same input, as are the gate and up
projections. At 1.1 B those kernels took over half of a packed batch's GPU time, and ~2.2 ms of a
6.7 B decode step of 8.9 ms (docs/benchmarks.md).

Here a layer runs: one RMSNorm kernel, the query, key and value projections, one kernel rotating
queries and keys in place, the model's attention function (looked up by the config's name exactly
as Hugging Face's layer does, so the engine's grouped, packed and static-cache attention serve
unchanged), the output projection, one kernel for the residual add and the second RMSNorm, the gate
and up projections, one kernel for SiLU and the product, the down projection and the residual add.

The kernels round where Hugging Face's separate operations round (each product and the sum of the
rotary embedding, the normalized row before the weight's product, SiLU before the gate's product),
with CUDA's own exp, division and rsqrt, so a fused layer computes the same values up to the order
of one fp32 sum (the RMS). Prefills (multiple choice, every prompt) call Hugging Face's own matrix
products. Decode steps, one token a row, run the q, k, v projections as one product and the gate and
up projections as another (`Joined`: the weights are laid out as row slices of one tensor, no memory
added): at a decode step's few rows the products read weights, and two larger ones read them faster
(session 7's first H200 call, which joined them in every forward: a 16-row 6.7 B decode step 6.08 ms
against 6.93 ms, its rotary kernel also differing; as committed, measured only within whole
evaluations together with queued steps: docs/benchmarks.md). cuBLAS then sums in another order, so a
decode step's bf16 values differ from Hugging Face's layer at the same shape by rounding; they never
were stock HELM's (one row at a time: other shapes, other kernels). `ENGINE_JOINED_DECODE=0` keeps
the separate products.

The static decoder's steps (static_decode.py) go further, with the same roundings: `layer_parts`
leaves each layer's last residual add to the next layer's input-norm kernel (the last layer's to the
final norm), and `rope_store` has the rotary kernel write a step's rotated keys straight into the cache
at the step's column and its values beside them (no index_copy_ kernels): three kernels fewer a layer.
Their attention is the cache's own (`rope_attend`, decode_attention.py): it reads each row's filled
columns only, not the whole buffer through the mask, and rotates and stores the step's key itself.

`install` applies to llama, mistral and qwen2 layers without sliding windows whose parts look as
expected; anything else keeps Hugging Face's layer. Triton kernels on CUDA for half precision;
elsewhere (and when Triton is missing or fails) the same arithmetic in torch operations.
`ENGINE_FUSED=0` turns it off, `ENGINE_FUSED=1` installs it on any device (the tests, on the CPU).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from evaluation.engine.server.attention import attention_shape

log = logging.getLogger(__name__)

MODEL_TYPES = ("llama", "mistral", "qwen2")
_active = False  # the fused forward runs only inside the engine's batches (one model thread)
switched_on = True  # benchmarks turn installed layers back to Hugging Face's forward for comparisons
# Decode steps (one token a row) run the q/k/v and gate/up projections as one product each; benchmarks
# turn it off to compare (`ENGINE_JOINED_DECODE=0` does too).
joined_decode = os.environ.get("ENGINE_JOINED_DECODE", "1") != "0"

try:  # Triton ships with CUDA builds of torch; a CPU-only install may lack it
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import libdevice
except ImportError:  # pragma: no cover - the torch operations serve
    triton = None


# --- the kernels ----------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _rms_factor(x, inv_n, eps, EXACT: tl.constexpr):
        """1 / sqrt(mean(x²) + eps) of an fp32 row (its padding zeros)."""
        variance = tl.sum(x * x, axis=0) * inv_n  # torch's mean multiplies by the fp32 1/n
        if EXACT:  # CUDA's rsqrtf, as torch.rsqrt calls it (tl.math.rsqrt flushes denormals)
            return libdevice.rsqrt(variance + eps)
        return tl.math.rsqrt(variance + eps)

    @triton.jit
    def _rms_norm_kernel(
        x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, n, inv_n, eps,
        HAS_RES: tl.constexpr, BLOCK: tl.constexpr, EXACT: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        keep = cols < n
        x = tl.load(x_ptr + row * n + cols, mask=keep, other=0.0).to(tl.float32)
        if HAS_RES:  # the residual sum, rounded as torch's add rounds it, is also the next residual
            r = tl.load(res_ptr + row * n + cols, mask=keep, other=0.0).to(tl.float32)
            x = (x + r).to(res_out_ptr.dtype.element_ty)
            tl.store(res_out_ptr + row * n + cols, x, mask=keep)
            x = x.to(tl.float32)
        scale = _rms_factor(x, inv_n, eps, EXACT)
        y = (x * scale).to(out_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=keep, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * n + cols, (w * y).to(out_ptr.dtype.element_ty), mask=keep)

    @triton.jit
    def _row_scale(res_ptr, row, n, inv_n, eps, BLOCK_H: tl.constexpr, EXACT: tl.constexpr):
        """A residual row's RMS-norm factor, as `_rms_norm_kernel` computes it: the kernels after a
        folded norm's product (folded.py) scale their inputs by it."""
        h = tl.arange(0, BLOCK_H)
        x = tl.load(res_ptr + row * n + h, mask=h < n, other=0.0).to(tl.float32)
        return _rms_factor(x, inv_n, eps, EXACT)

    @triton.jit
    def _silu_mul_kernel(
        gate_ptr, up_ptr, out_ptr, inter, in_row, res_ptr, n, inv_n, eps,
        BLOCK: tl.constexpr, EXACT: tl.constexpr, SCALED: tl.constexpr = False, BLOCK_H: tl.constexpr = 16,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        keep = cols < inter
        g = tl.load(gate_ptr + row * in_row + cols, mask=keep, other=0.0).to(tl.float32)
        u = tl.load(up_ptr + row * in_row + cols, mask=keep, other=0.0).to(tl.float32)
        if SCALED:  # a folded norm: the product read the residual; its outputs take the row's factor, rounded
            scale = _row_scale(res_ptr, row, n, inv_n, eps, BLOCK_H, EXACT)
            g = (g * scale).to(out_ptr.dtype.element_ty).to(tl.float32)
            u = (u * scale).to(out_ptr.dtype.element_ty).to(tl.float32)
        if EXACT:  # torch's SiLU: CUDA's expf and an IEEE division (tl.exp and / are approximate)
            s = tl.math.div_rn(g, 1.0 + libdevice.exp(-g))
        else:
            s = g / (1.0 + tl.exp(-g))
        s = s.to(out_ptr.dtype.element_ty).to(tl.float32)
        tl.store(out_ptr + row * inter + cols, (s * u).to(out_ptr.dtype.element_ty), mask=keep)

    @triton.jit
    def _mul_rounded(a, b, EXACT: tl.constexpr):
        """a * b in fp32 that the compiler may not fuse into a following add (LLVM narrows a product
        rounded to half precision into a half-precision multiply and NVPTX contracts that with the
        sum into one fma, which skips the product's rounding that torch's separate operations do)."""
        if EXACT:
            return tl.inline_asm_elementwise(
                "mul.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32, is_pure=True, pack=1
            )
        return a * b  # Triton's interpreter (the tests, on the CPU) rounds each operation as written

    @triton.jit
    def _rotated(x1, x2, c1, c2, s1, s2, dt: tl.constexpr, EXACT: tl.constexpr):
        """(x * cos) + (rotate_half(x) * sin) in halves (fp32 in, `dt` out), each product and the sum
        rounded as torch rounds them."""
        o1 = _mul_rounded(x1, c1, EXACT).to(dt).to(tl.float32) + _mul_rounded(-x2, s1, EXACT).to(dt).to(tl.float32)
        o2 = _mul_rounded(x2, c2, EXACT).to(dt).to(tl.float32) + _mul_rounded(x1, s2, EXACT).to(dt).to(tl.float32)
        return o1.to(dt), o2.to(dt)

    # `length` (tokens a row) a number, not specialized: Triton compiles a kernel of its own for an int
    # equal to 1, one divisible by 16 and any other, so the warm-up's one-token forward compiled only the
    # first, and an evaluation's first prefills compiled the others (on a new machine, inside its batches).
    @triton.jit(do_not_specialize=["length"])
    def _rope_kernel(
        q_ptr, k_ptr, cos_ptr, sin_ptr, length, cos_batch, cos_token, q_token, k_token,
        v_ptr, kc_ptr, vc_ptr, col_ptr, v_token, c_row, c_head,
        HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
        STORE: tl.constexpr, EXACT: tl.constexpr,
    ):  # fmt: skip
        """Queries and keys rotated in place; with STORE (a decode step, one token a row) the keys are
        written rotated into the cache at the column `col_ptr` holds, and the values beside them."""
        token = tl.program_id(0).to(tl.int64)
        is_q = tl.program_id(1) == 0  # 0: this token's queries, 1: its keys
        dim = 2 * HALF
        heads = tl.arange(0, BLOCK_H)[:, None]
        cols = tl.arange(0, HALF)[None, :]
        keep = heads < tl.where(is_q, HEADS, KV_HEADS)
        if is_q:
            src = q_ptr + token * q_token + heads * dim + cols
        else:
            src = k_ptr + token * k_token + heads * dim + cols
        trig = (token // length) * cos_batch + (token % length) * cos_token + cols
        c1 = tl.load(cos_ptr + trig).to(tl.float32)
        c2 = tl.load(cos_ptr + trig + HALF).to(tl.float32)
        s1 = tl.load(sin_ptr + trig).to(tl.float32)
        s2 = tl.load(sin_ptr + trig + HALF).to(tl.float32)
        x1 = tl.load(src, mask=keep, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF, mask=keep, other=0.0).to(tl.float32)
        o1, o2 = _rotated(x1, x2, c1, c2, s1, s2, q_ptr.dtype.element_ty, EXACT)
        if STORE and not is_q:  # token == row: one token a row
            dst = token * c_row + heads * c_head + tl.load(col_ptr) * dim + cols
            tl.store(kc_ptr + dst, o1, mask=keep)
            tl.store(kc_ptr + dst + HALF, o2, mask=keep)
            values = v_ptr + token * v_token + heads * dim + cols
            tl.store(vc_ptr + dst, tl.load(values, mask=keep), mask=keep)
            tl.store(vc_ptr + dst + HALF, tl.load(values + HALF, mask=keep), mask=keep)
        else:
            tl.store(src, o1, mask=keep)
            tl.store(src + HALF, o2, mask=keep)

    # The log-sum-exps' head strides are the batch's token counts (flash's [heads, tokens] transposed):
    # numbers, not specialized, or each batch's counts (1, divisible by 16, other) compile their own.
    @triton.jit(do_not_specialize=["l_head", "q_head"])
    def _merge_kernel(
        own_ptr, own_lse_ptr, pre_ptr, pre_lse_ptr, heads, o_row, o_head, l_row, l_head, p_row, p_head,
        q_row, q_head, DIM: tl.constexpr, BLOCK_H: tl.constexpr, EXACT: tl.constexpr,
    ):  # fmt: skip
        token = tl.program_id(0).to(tl.int64)
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, DIM)[None, :]
        keep = h < heads
        x = tl.load(pre_lse_ptr + token * q_row + h * q_head, mask=keep, other=0.0) - tl.load(
            own_lse_ptr + token * l_row + h * l_head, mask=keep, other=0.0
        )
        if EXACT:  # torch.sigmoid: 1 / (1 + expf(-x)), an IEEE division
            share = tl.math.div_rn(1.0, 1.0 + libdevice.exp(-x))
        else:
            share = 1.0 / (1.0 + tl.exp(-x))
        own = tl.load(own_ptr + token * o_row + h * o_head + d, mask=keep, other=0.0).to(tl.float32)
        pre = tl.load(pre_ptr + token * p_row + h * p_head + d, mask=keep, other=0.0).to(tl.float32)
        diff = pre - own
        # torch.lerp's two forms, chosen by the weight as torch chooses them
        merged = tl.where(share < 0.5, own + share * diff, pre - diff * (1.0 - share))
        tl.store(own_ptr + token * o_row + h * o_head + d, merged.to(own_ptr.dtype.element_ty), mask=keep)


_triton_failed = False
# Triton's interpreter runs the kernels on the CPU (TRITON_INTERPRET=1): how the tests check them.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _use_triton(x: torch.Tensor) -> bool:
    on_device = x.is_cuda or (_INTERPRET and x.device.type == "cpu")
    return triton is not None and not _triton_failed and on_device and x.dtype in (torch.float16, torch.bfloat16)


def _run_kernel(launch, fallback):
    """A kernel that fails to compile or launch (an old GPU, a Triton mismatch) leaves the torch
    operations to every later call."""
    global _triton_failed
    try:
        return launch()
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception:
        log.exception("fused kernel failed; the torch operations serve from now on")
        _triton_failed = True
        return fallback()


# --- the operations, each with its torch equivalent -----------------------------------------------


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face's LlamaRMSNorm, operation for operation."""
    h = x.to(torch.float32) * row_scale_torch(x, eps)
    return weight * h.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """RMSNorm of x, or of residual + x, then (normed, residual + x)."""
    plain = not x.is_contiguous() or weight.dtype != x.dtype or (residual is not None and not residual.is_contiguous())
    if not _use_triton(x) or plain:
        return _rms_norm_fallback(x, weight, eps, residual)
    n = x.shape[-1]
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else x

    def launch():
        rows = x.numel() // n
        if rows:
            block = triton.next_power_of_2(n)
            _rms_norm_kernel[(rows,)](
                x, residual if residual is not None else x, weight, out, res_out, n, _fp32_reciprocal(n), eps,
                HAS_RES=residual is not None, BLOCK=block, EXACT=not _INTERPRET,
                num_warps=min(16, max(1, block // 512)),
            )  # fmt: skip
        return out, res_out

    return _run_kernel(launch, lambda: _rms_norm_fallback(x, weight, eps, residual))


@functools.cache  # once per hidden size, not in every layer's call
def _fp32_reciprocal(n: int) -> float:
    return float(torch.tensor(1.0, dtype=torch.float32) / n)


def _rms_norm_fallback(x, weight, eps, residual):
    if residual is not None:
        x = residual + x
    return rms_norm_torch(x, weight, eps), x


def silu_mul_torch(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def _token_stride(x: torch.Tensor) -> int | None:
    """The stride between the tokens of x [..., features] if its rows are evenly spaced with
    contiguous features (a whole tensor, or a column slice of a joined projection's output)."""
    if x.stride(-1) != 1:
        return None
    step = x.stride(-2) if x.dim() > 1 else x.shape[-1]
    for i in range(x.dim() - 2, 0, -1):
        if x.shape[i - 1] > 1 and x.stride(i - 1) != x.shape[i] * x.stride(i):
            return None
    return step


def row_scale_torch(residual: torch.Tensor, eps: float) -> torch.Tensor:
    """Each row's RMS-norm factor [..., 1] in fp32, as `rms_norm_torch` computes it."""
    h = residual.to(torch.float32)
    return torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


def scaled_rows(scale_of: tuple[torch.Tensor, float], *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each of `tensors` [rows, ..., features] times its row's RMS-norm factor of the residual rows
    `scale_of` = (residual, eps), rounded to its dtype (as a product's output is): a folded norm's
    products in torch operations (folded.py)."""
    scale = row_scale_torch(*scale_of)
    return tuple((t.to(torch.float32) * scale.reshape(scale.shape[0], *[1] * (t.dim() - 1))).to(t.dtype)
                 for t in tensors)  # fmt: skip


def silu_mul(gate: torch.Tensor, up: torch.Tensor, scale_of: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """SiLU(gate) * up in one kernel (gate and up may be column slices of one joined product).
    `scale_of` (residual, eps): gate and up are a folded norm's products of the raw residual rows, and
    each takes its row's RMS-norm factor first (folded.py)."""
    step = _token_stride(gate)
    residual = scale_of[0] if scale_of is not None else None
    plain = up.shape != gate.shape or step is None or _token_stride(up) != step
    if residual is not None:
        rows = gate.numel() // gate.shape[-1]
        plain = plain or not residual.is_contiguous() or residual.dtype != gate.dtype
        plain = plain or residual.numel() != rows * residual.shape[-1]  # a residual row for each row
    if not _use_triton(gate) or plain:
        return _silu_mul_fallback(gate, up, scale_of)
    inter = gate.shape[-1]
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)

    def launch():
        rows = gate.numel() // inter
        if rows:
            block = 1024
            n = residual.shape[-1] if residual is not None else 1
            _silu_mul_kernel[(rows, triton.cdiv(inter, block))](
                gate, up, out, inter, step, residual if residual is not None else gate, n, _fp32_reciprocal(n),
                scale_of[1] if scale_of is not None else 0.0, BLOCK=block, EXACT=not _INTERPRET,
                SCALED=residual is not None, BLOCK_H=triton.next_power_of_2(n), num_warps=4,
            )  # fmt: skip
        return out

    return _run_kernel(launch, lambda: _silu_mul_fallback(gate, up, scale_of))


def _silu_mul_fallback(gate, up, scale_of):
    if scale_of is not None:
        gate, up = scaled_rows(scale_of, gate, up)
    return silu_mul_torch(gate, up)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_tables(positions: torch.Tensor, dim: int, dtype: torch.dtype, base: float = 10000.0):
    """(cos, sin) [*positions.shape, dim] of a plain rotary embedding (Llama's default, no scaling):
    inputs for the kernels' checks, which need no model."""
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, device=positions.device).float() / dim))
    freqs = positions[..., None].float() * inv
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rope_torch(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dim: int):
    """Queries and keys [rows, heads, tokens, dim] from the projections' outputs [rows, tokens, heads
    × dim], rotated as Hugging Face's apply_rotary_pos_emb rotates them."""
    rows, length = q.shape[:2]
    q, k = (t.view(rows, length, -1, dim).transpose(1, 2) for t in (q, k))
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * c) + (_rotate_half(q) * s), (k * c) + (_rotate_half(k) * s)


def _rope_inputs(q, k, cos, sin, dim: int):
    """(q's token stride, k's, cos and sin expanded to every token) for the rotary kernel, or None where
    it does not apply (the torch operations then serve)."""
    if not _use_triton(q) or cos.dtype != q.dtype or dim % 2 or dim & (dim - 1):
        return None
    q_token, k_token = _token_stride(q), _token_stride(k)
    rows, length = q.shape[:2]
    cos, sin = cos.expand(rows, length, dim), sin.expand(rows, length, dim)
    if q_token is None or k_token is None or cos.stride(-1) != 1 or sin.stride() != cos.stride():
        return None
    return q_token, k_token, cos, sin


def _launch_rope(q, k, dim: int, q_token: int, k_token: int, cos, sin, store: tuple | None = None) -> None:
    """The rotary kernel; `store`: (values, key cache, value cache, column, values' token stride)."""
    rows, length = q.shape[:2]
    heads, kv_heads = q.shape[-1] // dim, k.shape[-1] // dim
    v, key_cache, value_cache, column, v_token = store or (q, q, q, q, 0)  # unread without STORE
    if rows * length:
        _rope_kernel[(rows * length, 2)](
            q, k, cos, sin, length, cos.stride(0), cos.stride(1), q_token, k_token,
            v, key_cache, value_cache, column, v_token, key_cache.stride(0), key_cache.stride(1),
            HEADS=heads, KV_HEADS=kv_heads, HALF=dim // 2, BLOCK_H=triton.next_power_of_2(max(heads, kv_heads)),
            STORE=store is not None, EXACT=not _INTERPRET, num_warps=4,
        )  # fmt: skip


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dim: int):
    """As rope_torch; on a GPU one kernel for both, rotating them in place (the projections'
    outputs, used for nothing else; column slices of one joined product too)."""
    inputs = _rope_inputs(q, k, cos, sin, dim)
    if inputs is None:
        return rope_torch(q, k, cos, sin, dim)
    rows, length = q.shape[:2]

    def launch():
        _launch_rope(q, k, dim, *inputs)
        return tuple(t.view(rows, length, -1, dim).transpose(1, 2) for t in (q, k))

    return _run_kernel(launch, lambda: rope_torch(q, k, cos, sin, dim))


def rope_store(q, k, v, cos, sin, dim: int, key_cache: torch.Tensor, value_cache: torch.Tensor,
               column: torch.Tensor) -> torch.Tensor | None:  # fmt: skip
    """A decode step's rotary embedding and cache write in one kernel: q, k, v [rows, 1, heads × dim]
    (projection outputs, column slices of a joined one too); the caches [rows, kv_heads, columns, dim]
    get the rotated keys and the values at `column` (a one-element device tensor). Returns the rotated
    queries [rows, heads, 1, dim], or None where the kernel does not apply (the caller then rotates
    and writes as before)."""
    rows, length = q.shape[:2]
    fits = (
        length == 1 and key_cache.is_contiguous() and value_cache.is_contiguous()
        and key_cache.shape == value_cache.shape and key_cache.shape[0] >= rows
        and key_cache.shape[1] * dim == k.shape[-1] == v.shape[-1] and key_cache.shape[-1] == dim
        and key_cache.dtype == k.dtype == v.dtype
    )  # fmt: skip
    inputs = _rope_inputs(q, k, cos, sin, dim) if fits else None
    v_token = _token_stride(v)
    if inputs is None or v_token is None:
        return None

    def launch():
        _launch_rope(q, k, dim, *inputs, store=(v, key_cache, value_cache, column, v_token))
        return q.view(rows, 1, -1, dim).transpose(1, 2)

    return _run_kernel(launch, lambda: None)


def merge_torch(own: torch.Tensor, own_lse: torch.Tensor, pre: torch.Tensor, pre_lse: torch.Tensor) -> torch.Tensor:
    """Attention over two sets of keys from each set's result [tokens, heads, dim] and log-sum-exp
    [tokens, heads]: the second set's share of the softmax mass is sigmoid(lse_pre - lse_own)."""
    share = torch.sigmoid(pre_lse - own_lse)[..., None]
    return torch.lerp(own.float(), pre.float(), share).to(own.dtype)


def merge_into(own: torch.Tensor, own_lse: torch.Tensor, pre: torch.Tensor, pre_lse: torch.Tensor) -> None:
    """As merge_torch, written into `own`; on a GPU one kernel instead of six (two of them fp32
    copies of both results)."""
    tokens, heads, dim = own.shape
    wanted = switched_on and _setting() != "0"  # off wherever the fused layers are
    usable = wanted and own.stride(-1) == 1 and pre.stride(-1) == 1 and not dim & (dim - 1) and pre.shape == own.shape
    if not _use_triton(own) or not usable or own_lse.dtype != torch.float32 or pre_lse.dtype != torch.float32:
        own.copy_(merge_torch(own, own_lse, pre, pre_lse))
        return

    def launch():
        if tokens:
            _merge_kernel[(tokens,)](
                own, own_lse, pre, pre_lse, heads, *own.stride()[:2], *own_lse.stride(), *pre.stride()[:2],
                *pre_lse.stride(), DIM=dim, BLOCK_H=triton.next_power_of_2(heads), EXACT=not _INTERPRET,
                num_warps=4,
            )  # fmt: skip

    _run_kernel(launch, lambda: own.copy_(merge_torch(own, own_lse, pre, pre_lse)))


def prepare_merge(model: Any) -> bool:
    """The server's warm-up: compile (or load from Triton's cache) the prefix merge at the model's
    heads and head size. The warm-up's one-token forward has no prefix, so without this a new
    machine's first packed batch with one compiled it. Whether it ran `merge_into` (which keeps
    torch's operations where the kernel does not apply)."""
    like = next(model.parameters())
    if not installed(model) or not _use_triton(like):
        return False
    heads, _, dim = attention_shape(model.config)
    own = torch.zeros(2, heads, dim, dtype=like.dtype, device=like.device)
    lse = torch.zeros(heads, 2, dtype=torch.float32, device=like.device).t()  # flash's layout, transposed
    merge_into(own, lse, own.clone(), lse.clone())
    return True


# --- the layer ------------------------------------------------------------------------------------


def _eps(norm: Any) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def fused_forward(layer: Any, hidden_states: torch.Tensor, attention_mask=None, position_ids=None,
                  past_key_values=None, use_cache=False, cache_position=None, position_embeddings=None,
                  **kwargs):  # fmt: skip
    """Hugging Face's decoder layer, the same calls in the same order, fused where it can be."""
    legacy = kwargs.pop("past_key_value", None)  # transformers 4.x's name
    past = past_key_values if past_key_values is not None else legacy
    kwargs.pop("output_attentions", None)
    out, residual = layer_parts(layer, hidden_states, None, attention_mask, position_ids, past, cache_position,
                                position_embeddings, **kwargs)  # fmt: skip
    return residual + out


def layer_parts(layer: Any, hidden_states: torch.Tensor, pending: torch.Tensor | None, attention_mask, position_ids,
                past, cache_position, position_embeddings, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The layer as (MLP output, residual): the layer's output is their sum, left to the caller so that
    the next layer's input norm adds it in its own kernel. `pending`: the layer before's MLP output
    when `hidden_states` is its residual (the sum not made yet)."""
    attn, mlp = layer.self_attn, layer.mlp
    rows, length = hidden_states.shape[:2]
    norm = layer.input_layernorm
    if pending is None:
        x, _ = rms_norm(hidden_states, norm.weight, _eps(norm))
    else:
        x, hidden_states = rms_norm(pending, norm.weight, _eps(norm), residual=hidden_states)
    cos, sin = position_embeddings
    qkv = _joined_here(attn, length)
    # Else Hugging Face's three products, whose results are bitwise the stock layer's.
    q, k, v = qkv(x) if qkv is not None else (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x))
    # The static decoder's cache rotates a step's queries and key, stores its key and value and
    # attends over each row's filled columns only, in one kernel (decode_attention.py).
    rope_attend = getattr(past, "rope_attend", None) if length == 1 else None
    out = rope_attend(q, k, v, cos, sin, attn.layer_idx, attn.scaling) if rope_attend is not None else None
    if out is None:
        out = _attention(attn, q, k, v, cos, sin, attention_mask, position_ids, past, cache_position, **kwargs)
    out = attn.o_proj(out.reshape(rows, length, -1).contiguous())
    post = layer.post_attention_layernorm
    x, residual = rms_norm(out, post.weight, _eps(post), residual=hidden_states)
    gate_up = _joined_here(mlp, length)
    gate, up = gate_up(x) if gate_up is not None else (mlp.gate_proj(x), mlp.up_proj(x))
    return mlp.down_proj(silu_mul(gate, up)), residual


def _attention(attn, q, k, v, cos, sin, attention_mask, position_ids, past, cache_position, **kwargs):
    """The attention output [rows, tokens, heads, dim] of the projections' outputs, rotated and cached."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    rows, length = q.shape[:2]
    # The static decoder's cache takes a step's rotated keys and values from the rotary kernel itself.
    store = getattr(past, "store_rotated", None) if length == 1 else None
    stored = store(q, k, v, cos, sin, attn.head_dim, attn.layer_idx) if store is not None else None
    if stored is not None:
        q, k, v = stored
    else:
        q, k = rope(q, k, cos, sin, attn.head_dim)
        v = v.view(rows, length, -1, attn.head_dim).transpose(1, 2)
        if past is not None:
            k, v = past.update(k, v, attn.layer_idx, {"sin": sin, "cos": cos, "cache_position": cache_position})
    # The static decoder's cache attends over each row's filled columns only (decode_attention.py).
    attend = getattr(past, "attend", None) if length == 1 else None
    out = attend(q, attn.layer_idx, attn.scaling) if attend is not None else None
    if out is None:
        if callable(attention_mask):  # the static decoder's bias, built by the first layer that needs it
            attention_mask = attention_mask()
        implementation = attn.config._attn_implementation
        if implementation == "eager":
            from importlib import import_module

            interface = import_module(type(attn).__module__).eager_attention_forward
        else:
            interface = ALL_ATTENTION_FUNCTIONS[implementation]
        out, _ = interface(
            attn, q, k, v, attention_mask, dropout=0.0, scaling=attn.scaling, position_ids=position_ids, **kwargs
        )
    return out


def final_norm(norm: Any, pending: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor:
    """The model's last norm of residual + pending (the last layer's sum; None: residual is summed), in
    one kernel."""
    if pending is None:
        return rms_norm(residual, norm.weight, _eps(norm))[0]
    return rms_norm(pending, norm.weight, _eps(norm), residual=residual)[0]


def runs_fused(model: Any) -> bool:
    """Whether `model`'s layers run fused now (installed, and inside `active`)."""
    return bool(_active and getattr(model, "_engine_fused", False))


def installed(model: Any) -> bool:
    """Whether `model`'s layers run fused inside the engine's batches (any thread may ask)."""
    return bool(getattr(model, "_engine_fused", False) and switched_on)


def _joined_here(module: Any, length: int) -> Joined | None:
    """The module's joined projections if this forward is a decode step (one token a row)."""
    joined = getattr(module, "_engine_joined", None)
    return joined if length == 1 and joined_decode else None


class Joined:
    """Several projections of one input as one matrix product: their weights (and biases) become
    row slices of one tensor, so the modules compute exactly what they did and no memory is added."""

    def __init__(self, linears: list[torch.nn.Linear]):
        first = linears[0].weight
        self.sizes = [m.out_features for m in linears]
        # A decode step's copy of the weight with a norm's weight folded in (folded.py), or None.
        self.folded: torch.Tensor | None = None
        self.weight = torch.empty(sum(self.sizes), first.shape[1], dtype=first.dtype, device=first.device)
        has_bias = linears[0].bias is not None
        self.bias = torch.empty(sum(self.sizes), dtype=first.dtype, device=first.device) if has_bias else None
        offset = 0
        with torch.no_grad():
            for module, size in zip(linears, self.sizes, strict=True):
                part = slice(offset, offset + size)
                self.weight[part].copy_(module.weight)
                module.weight.data = self.weight[part]  # the old storage is freed: one layer's worth at a time
                if has_bias:
                    self.bias[part].copy_(module.bias)
                    module.bias.data = self.bias[part]
                offset += size

    @staticmethod
    def possible(linears: list[Any]) -> bool:
        """Plain Linear layers of one dtype, device and input size, each weight (and bias) the sole
        tensor of its storage: one that shares a storage (a view into one buffer of all weights) would
        stay alive after the re-layout, and the joined copy would add memory instead of replacing it."""
        first = linears[0]

        def owns(t: torch.Tensor | None) -> bool:
            return t is None or t.untyped_storage().nbytes() == t.numel() * t.element_size()

        return all(
            type(m) is torch.nn.Linear
            and m.weight.dtype == first.weight.dtype
            and m.weight.device == first.weight.device
            and m.in_features == first.in_features
            and (m.bias is None) == (first.bias is None)
            and owns(m.weight)
            and owns(m.bias)
            for m in linears
        )

    def __call__(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The projections of x; `weight`: another weight of the same layout (the folded copy)."""
        return list(F.linear(x, self.weight if weight is None else weight, self.bias).split(self.sizes, dim=-1))


def _join(module: Any, names: tuple[str, ...]) -> None:
    linears = [getattr(module, name) for name in names]
    if Joined.possible(linears):
        module._engine_joined = Joined(linears)


def _layer_ok(layer: Any) -> bool:
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    parts = (
        all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "layer_idx"))
        and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))
        and all(hasattr(layer, n) for n in ("input_layernorm", "post_attention_layernorm"))
    )
    if not parts or type(getattr(mlp, "act_fn", None)).__name__ not in ("SiLU", "SiLUActivation"):
        return False
    if any(hasattr(attn, n) for n in ("q_norm", "k_norm")) or getattr(attn, "sliding_window", None):
        return False
    return plain_rms_norm(layer.input_layernorm) and plain_rms_norm(layer.post_attention_layernorm)


def plain_rms_norm(norm: Any) -> bool:
    """A Llama-style RMSNorm (weight × normalized), as `rms_norm` computes it."""
    return type(norm).__name__.endswith("RMSNorm") and not hasattr(norm, "offset") and hasattr(norm, "weight")


def _setting() -> str:
    return os.environ.get("ENGINE_FUSED", "auto")


def enabled(model: Any) -> bool:
    """Whether `install` would fuse this model's layers here (`ENGINE_FUSED`: auto, 1 or 0)."""
    setting = _setting()
    config = getattr(model, "config", None)
    if setting == "0" or config is None or getattr(config, "model_type", None) not in MODEL_TYPES:
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    if setting != "1":
        param = next(model.parameters(), None)
        if param is None or not param.is_cuda or param.dtype not in (torch.float16, torch.bfloat16) or triton is None:
            return False
    layers = getattr(getattr(model, "model", None), "layers", None)
    return bool(layers) and all(_layer_ok(layer) for layer in layers)


def install(model: Any) -> bool:
    """Fuse every decoder layer of `model` (for the engine's forwards, inside `active`)."""
    if getattr(model, "_engine_fused", False):
        return True
    if not enabled(model):
        return False
    for layer in model.model.layers:
        _join(layer.self_attn, ("q_proj", "k_proj", "v_proj"))
        _join(layer.mlp, ("gate_proj", "up_proj"))
        original = layer.forward

        def forward(*args, _layer=layer, _original=original, **kwargs):
            if _active:
                return fused_forward(_layer, *args, **kwargs)
            return _original(*args, **kwargs)

        layer.forward = forward
    model._engine_fused = True
    return True


@contextmanager
def active(model: Any) -> Iterator[None]:
    """Within: the fused layers of `model` (if installed) run fused."""
    global _active
    if not getattr(model, "_engine_fused", False) or not switched_on:
        yield
        return
    previous, _active = _active, True
    try:
        yield
    finally:
        _active = previous
