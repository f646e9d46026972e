"""Decoder layers with fused elementwise kernels, for the engine's own forwards on a GPU.

Hugging Face's Llama-style layer spends most kernels of a forward on elementwise work: RMSNorm is
eight kernels (to fp32, square, mean, add, rsqrt, multiply, back to the weights' dtype, multiply),
rotary embeddings a dozen for queries and keys, SiLU and the gate's product two more, and the
queries, keys and values are three matrix products over the same input, as are the gate and up
projections. At 1.1 B those kernels took over half of a packed batch's GPU time, and ~2.2 ms of a
6.7 B decode step of 8.9 ms (docs/benchmarks.md).

Here a layer runs: one RMSNorm kernel, one matrix product for queries, keys and values together,
one kernel for the rotary embeddings of queries and keys (and the copy of the values into their own
tensor, the layout Hugging Face's cache keeps), the model's attention function (looked up by the
config's name exactly as Hugging Face's layer does, so the engine's grouped, packed and static-cache
attention serve unchanged), the output projection, one kernel for the residual add and the second
RMSNorm, one matrix product for gate and up, one kernel for SiLU and the product, the down
projection and the residual add.

The kernels round where Hugging Face's separate operations round (each bf16 product and sum of the
rotary embedding, the normalized row before the weight's product, SiLU before the gate's product),
so a fused layer computes the same values up to the order of one fp32 sum (the RMS). The
concatenated weights are the layer's weights: the original parameters become views into them, so
memory is unchanged and the original forward still works outside the engine (`active`).

`install` applies to llama, mistral and qwen2 layers without sliding windows whose parts look as
expected; anything else keeps Hugging Face's layer. Triton kernels on CUDA for half precision;
elsewhere (and when Triton is missing or fails) the same arithmetic in torch operations.
`ENGINE_FUSED=0` turns it off, `ENGINE_FUSED=1` installs it on any device (the tests, on the CPU).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

MODEL_TYPES = ("llama", "mistral", "qwen2")
_active = False  # the fused forward runs only inside the engine's batches (one model thread)
switched_on = True  # benchmarks turn installed layers back to Hugging Face's forward for comparisons

try:  # Triton ships with CUDA builds of torch; a CPU-only install may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the torch operations serve
    triton = None


# --- the kernels ----------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _rms_norm_kernel(
        x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, n, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr
    ):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        keep = cols < n
        x = tl.load(x_ptr + row * n + cols, mask=keep, other=0.0).to(tl.float32)
        if HAS_RES:  # the residual sum, rounded as torch's add rounds it, is also the next residual
            r = tl.load(res_ptr + row * n + cols, mask=keep, other=0.0).to(tl.float32)
            x = (x + r).to(res_out_ptr.dtype.element_ty)
            tl.store(res_out_ptr + row * n + cols, x, mask=keep)
            x = x.to(tl.float32)
        variance = tl.sum(x * x, axis=0) / n
        y = (x * tl.math.rsqrt(variance + eps)).to(out_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=keep, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * n + cols, (w * y).to(out_ptr.dtype.element_ty), mask=keep)

    @triton.jit
    def _silu_mul_kernel(gu_ptr, out_ptr, inter, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        keep = cols < inter
        g = tl.load(gu_ptr + row * 2 * inter + cols, mask=keep, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + row * 2 * inter + inter + cols, mask=keep, other=0.0).to(tl.float32)
        s = (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)
        tl.store(out_ptr + row * inter + cols, (s * u).to(out_ptr.dtype.element_ty), mask=keep)

    @triton.jit
    def _rope_kernel(
        qkv_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, length, cos_batch, cos_token,
        HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr,
    ):  # fmt: skip
        token = tl.program_id(0).to(tl.int64)
        which = tl.program_id(1)  # 0: queries (in place), 1: keys (to k_ptr), 2: values (copied to v_ptr)
        dim = 2 * HALF
        width = (HEADS + 2 * KV_HEADS) * dim
        heads = tl.arange(0, BLOCK_H)[:, None]
        cols = tl.arange(0, HALF)[None, :]
        row = qkv_ptr + token * width
        if which == 2:
            keep = heads < KV_HEADS
            src = row + (HEADS + KV_HEADS) * dim + heads * dim + cols
            dst = v_ptr + token * KV_HEADS * dim + heads * dim + cols
            tl.store(dst, tl.load(src, mask=keep), mask=keep)
            tl.store(dst + HALF, tl.load(src + HALF, mask=keep), mask=keep)
        else:
            keep = heads < tl.where(which == 0, HEADS, KV_HEADS)
            src = row + which * HEADS * dim + heads * dim + cols
            b = token // length
            t = token % length
            trig = b * cos_batch + t * cos_token + cols
            c1 = tl.load(cos_ptr + trig).to(tl.float32)
            c2 = tl.load(cos_ptr + trig + HALF).to(tl.float32)
            s1 = tl.load(sin_ptr + trig).to(tl.float32)
            s2 = tl.load(sin_ptr + trig + HALF).to(tl.float32)
            x1 = tl.load(src, mask=keep, other=0.0).to(tl.float32)
            x2 = tl.load(src + HALF, mask=keep, other=0.0).to(tl.float32)
            dt = qkv_ptr.dtype.element_ty
            # (x * cos) + (rotate_half(x) * sin), each product and the sum rounded as torch rounds them
            o1 = ((x1 * c1).to(dt).to(tl.float32) + (-x2 * s1).to(dt).to(tl.float32)).to(dt)
            o2 = ((x2 * c2).to(dt).to(tl.float32) + (x1 * s2).to(dt).to(tl.float32)).to(dt)
            if which == 0:
                dst = src
            else:
                dst = k_ptr + token * KV_HEADS * dim + heads * dim + cols
            tl.store(dst, o1, mask=keep)
            tl.store(dst + HALF, o2, mask=keep)


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
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
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
                x, residual if residual is not None else x, weight, out, res_out, n, eps,
                HAS_RES=residual is not None, BLOCK=block, num_warps=min(16, max(1, block // 512)),
            )  # fmt: skip
        return out, res_out

    return _run_kernel(launch, lambda: _rms_norm_fallback(x, weight, eps, residual))


def _rms_norm_fallback(x, weight, eps, residual):
    if residual is not None:
        x = residual + x
    return rms_norm_torch(x, weight, eps), x


def silu_mul_torch(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up from the gate and up projections side by side in the last dimension."""
    if not _use_triton(gate_up) or not gate_up.is_contiguous():
        return silu_mul_torch(gate_up)
    inter = gate_up.shape[-1] // 2
    out = gate_up.new_empty((*gate_up.shape[:-1], inter))

    def launch():
        rows = gate_up.numel() // (2 * inter)
        if rows:
            block = 1024
            _silu_mul_kernel[(rows, triton.cdiv(inter, block))](gate_up, out, inter, BLOCK=block, num_warps=4)
        return out

    return _run_kernel(launch, lambda: silu_mul_torch(gate_up))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_split_torch(qkv, cos, sin, heads: int, kv_heads: int, dim: int):
    """Queries, keys and values [rows, heads, tokens, dim] from the fused projection, rotated as
    Hugging Face's apply_rotary_pos_emb rotates them."""
    rows, length = qkv.shape[:2]
    q, k, v = qkv.view(rows, length, heads + 2 * kv_heads, dim).transpose(1, 2).split([heads, kv_heads, kv_heads], 1)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * c) + (_rotate_half(q) * s), (k * c) + (_rotate_half(k) * s), v


def rope_split(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int, dim: int):
    """As rope_split_torch; on a GPU one kernel that rotates the queries in place (they live only
    until attention) and writes keys and values to tensors of their own, [rows, tokens, heads, dim]
    in memory as Hugging Face's projections leave them, so a cache keeps only its keys and values."""
    rows, length = qkv.shape[:2]
    if not _use_triton(qkv) or not qkv.is_contiguous() or cos.dtype != qkv.dtype or dim % 2 or dim & (dim - 1):
        return rope_split_torch(qkv, cos, sin, heads, kv_heads, dim)
    cos, sin = cos.expand(rows, length, dim), sin.expand(rows, length, dim)
    if cos.stride(-1) != 1 or sin.stride() != cos.stride():
        return rope_split_torch(qkv, cos, sin, heads, kv_heads, dim)
    k = qkv.new_empty((rows, length, kv_heads, dim))
    v = qkv.new_empty((rows, length, kv_heads, dim))

    def launch():
        if rows * length:
            _rope_kernel[(rows * length, 3)](
                qkv, k, v, cos, sin, length, cos.stride(0), cos.stride(1),
                HEADS=heads, KV_HEADS=kv_heads, HALF=dim // 2, BLOCK_H=triton.next_power_of_2(heads), num_warps=4,
            )  # fmt: skip
        q = qkv.view(rows, length, heads + 2 * kv_heads, dim)[:, :, :heads].transpose(1, 2)
        return q, k.transpose(1, 2), v.transpose(1, 2)

    return _run_kernel(launch, lambda: rope_split_torch(qkv, cos, sin, heads, kv_heads, dim))


# --- the layer ------------------------------------------------------------------------------------


class FusedWeights:
    """One layer's concatenated projections and what its forward needs to know."""

    def __init__(self, layer: Any):
        attn, mlp = layer.self_attn, layer.mlp
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        self.heads = attn.q_proj.out_features // attn.head_dim
        self.kv_heads = attn.k_proj.out_features // attn.head_dim
        self.head_dim = attn.head_dim
        self.qkv = _concatenate(projections, "weight")
        self.qkv_bias = _concatenate(projections, "bias") if attn.q_proj.bias is not None else None
        self.gate_up = _concatenate((mlp.gate_proj, mlp.up_proj), "weight")


def _concatenate(modules, name: str) -> torch.Tensor:
    """Their tensors side by side in one; each module's own becomes a view into it (no extra memory
    once the originals are freed)."""
    joined = torch.cat([getattr(m, name).detach() for m in modules], dim=0)
    start = 0
    for m in modules:
        n = getattr(m, name).shape[0]
        setattr(m, name, torch.nn.Parameter(joined[start : start + n], requires_grad=False))
        start += n
    return joined


def _eps(norm: Any) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def fused_forward(layer: Any, hidden_states: torch.Tensor, attention_mask=None, position_ids=None,
                  past_key_values=None, use_cache=False, cache_position=None, position_embeddings=None,
                  **kwargs):  # fmt: skip
    """Hugging Face's decoder layer, the same calls in the same order, fused where it can be."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    past = past_key_values if past_key_values is not None else kwargs.pop("past_key_value", None)
    kwargs.pop("past_key_value", None)
    kwargs.pop("output_attentions", None)
    f: FusedWeights = layer._engine_fused
    attn = layer.self_attn
    rows, length = hidden_states.shape[:2]
    x, _ = rms_norm(hidden_states, layer.input_layernorm.weight, _eps(layer.input_layernorm))
    qkv = F.linear(x, f.qkv, f.qkv_bias)
    cos, sin = position_embeddings
    q, k, v = rope_split(qkv, cos, sin, f.heads, f.kv_heads, f.head_dim)
    if past is not None:
        k, v = past.update(k, v, attn.layer_idx, {"sin": sin, "cos": cos, "cache_position": cache_position})
    implementation = attn.config._attn_implementation
    if implementation == "eager":
        from importlib import import_module

        interface = import_module(type(attn).__module__).eager_attention_forward
    else:
        interface = ALL_ATTENTION_FUNCTIONS[implementation]
    out, _ = interface(
        attn, q, k, v, attention_mask, dropout=0.0, scaling=attn.scaling, position_ids=position_ids, **kwargs
    )
    out = attn.o_proj(out.reshape(rows, length, -1).contiguous())
    post = layer.post_attention_layernorm
    x, residual = rms_norm(out, post.weight, _eps(post), residual=hidden_states)
    return residual + layer.mlp.down_proj(silu_mul(F.linear(x, f.gate_up)))


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
    linear = (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj)
    if not all(isinstance(m, torch.nn.Linear) and type(m) is torch.nn.Linear for m in linear):
        return False  # quantized or adapter layers keep their own forward
    if (mlp.gate_proj.bias is not None) or (mlp.up_proj.bias is not None):
        return False
    if len({attn.q_proj.bias is None, attn.k_proj.bias is None, attn.v_proj.bias is None}) > 1:
        return False
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    return all(type(n).__name__.endswith("RMSNorm") and not hasattr(n, "offset") for n in norms)


def enabled(model: Any) -> bool:
    """Whether `install` would fuse this model's layers here (`ENGINE_FUSED`: auto, 1 or 0)."""
    setting = os.environ.get("ENGINE_FUSED", "auto")
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
        with torch.no_grad():
            layer._engine_fused = FusedWeights(layer)
        original = layer.forward

        def forward(*args, _layer=layer, _original=original, **kwargs):
            if _active:
                return fused_forward(_layer, *args, **kwargs)
            return _original(*args, **kwargs)

        layer.forward = forward
    model._engine_fused = True
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the replaced projections' memory
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
