"""The fused decoder layer's kernels (evaluation/engine/server/fused.py, and the packed attention's
merge) against the torch operations they replace: how many elements differ, and on a GPU how long
one decoder layer takes each way.

    python -m benchmarks.fused_kernels --out var/fused            # on a GPU: checks and timings
    TRITON_INTERPRET=1 python -m benchmarks.fused_kernels --check-only --device cpu   # the tests' way

Checks: each kernel on random inputs (fp16, and bf16 on a GPU; Triton's interpreter rounds bf16
toward zero, so there only fp16 is exact), then a small random Llama whose logits are computed with
the fused layers and with Hugging Face's. Timings (GPU): one decoder layer of the 1.1 B and 6.7 B
shapes (benchmarks/engine_speed.py), bf16, for decode-like (rows × 1 token) and prefill-like
(1 × tokens) inputs, each replayed as a CUDA graph so that launch overhead is not counted for either.
Prints one JSON line; writes results.json to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("ENGINE_FUSED", "1")


def _diff(op, dtype, got, want, used_triton) -> dict:
    return {
        "op": op, "dtype": str(dtype).removeprefix("torch."), "triton": used_triton,
        "unequal": int((got != want).sum()), "elements": got.numel(),
        "max_abs_diff": float((got.float() - want.float()).abs().max()),
    }  # fmt: skip


def check_kernels(device: str) -> list[dict]:
    import torch

    from evaluation.engine.server import fused

    dtypes = [torch.float16] + ([torch.bfloat16] if device == "cuda" else [])
    out = []
    torch.manual_seed(0)
    for dtype in dtypes:
        for hidden in (96, 2048):
            x = torch.randn(7, 3, hidden, dtype=dtype, device=device)
            w = torch.randn(hidden, dtype=dtype, device=device)
            r = torch.randn(7, 3, hidden, dtype=dtype, device=device)
            used = fused._use_triton(x)
            got, _ = fused.rms_norm(x, w, 1e-5)
            out.append(_diff("rms_norm", dtype, got, fused.rms_norm_torch(x, w, 1e-5), used))
            got, got_res = fused.rms_norm(x, w, 1e-5, residual=r)
            want, want_res = fused._rms_norm_fallback(x, w, 1e-5, r)
            out.append(_diff("add_rms_norm", dtype, got, want, used))
            out.append(_diff("residual_sum", dtype, got_res, want_res, used))
        gate, up = (torch.randn(5, 2, 1100, dtype=dtype, device=device) * 3 for _ in range(2))
        want = fused.silu_mul_torch(gate, up)
        out.append(_diff("silu_mul", dtype, fused.silu_mul(gate, up), want, fused._use_triton(gate)))
        # A decode step's joined gate/up product: both halves are column slices of one tensor.
        joined = torch.randn(6, 1, 2 * 1100, dtype=dtype, device=device) * 3
        gate, up = joined.split(1100, dim=-1)
        got = fused.silu_mul(gate, up)
        out.append(_diff("silu_mul_joined", dtype, got, fused.silu_mul_torch(gate, up), fused._use_triton(gate)))
        # Folded norms (folded.py): the products of the raw residual rows, each row scaled by its factor.
        residual = torch.randn(6, 1, 2048, dtype=dtype, device=device) * 5
        scale_of = (residual, 1e-5)
        want = fused._silu_mul_fallback(gate, up, scale_of)
        out.append(_diff("silu_mul_folded", dtype, fused.silu_mul(gate, up, scale_of), want, fused._use_triton(gate)))
        for tokens, heads, dim in ((7, 6, 16), (50, 32, 64)):  # the packed attention's merge, varlen layout
            own, pre = (torch.randn(tokens, heads, dim, dtype=dtype, device=device) for _ in range(2))
            own_lse, pre_lse = (torch.randn(heads, tokens, device=device).t() * 3 for _ in range(2))
            want = fused.merge_torch(own, own_lse, pre, pre_lse)
            got = own.clone()
            fused.merge_into(got, own_lse, pre, pre_lse)
            out.append(_diff("merge", dtype, got, want, fused._use_triton(own)) | {"heads": [heads]})
        for heads, kv_heads, dim, shared in ((6, 2, 16, False), (8, 8, 32, True), (32, 4, 64, False)):
            q = torch.randn(3, 5, heads * dim, dtype=dtype, device=device) * 4
            k = torch.randn(3, 5, kv_heads * dim, dtype=dtype, device=device) * 4
            positions = torch.arange(5, device=device)[None] + torch.tensor([[0], [3], [9]], device=device)
            cos, sin = fused.rotary_tables(positions[:1] if shared else positions, dim, dtype)
            want = fused.rope_torch(q, k, cos, sin, dim)
            got = fused.rope(q.clone(), k.clone(), cos, sin, dim)
            for name, g, e in zip("qk", got, want, strict=True):
                assert g.shape == e.shape
                out.append(_diff(f"rope_{name}", dtype, g, e, fused._use_triton(q)) | {"heads": [heads, kv_heads]})
            # Queries and keys as column slices of a joined q/k/v product (decode steps: one token a row).
            for length in (1, 5):
                qkv = torch.randn(3, length, (heads + 2 * kv_heads) * dim, dtype=dtype, device=device) * 4
                q, k, _ = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
                cos, sin = fused.rotary_tables(positions[:, :length], dim, dtype)
                want = fused.rope_torch(q.clone(), k.clone(), cos, sin, dim)
                got = fused.rope(q, k, cos, sin, dim)
                for name, g, e in zip("qk", got, want, strict=True):
                    out.append(_diff(f"rope_{name}_joined", dtype, g, e, fused._use_triton(q)) | {"length": length})
            # A static decode step: rotated keys and the values written into the cache at its column.
            qkv = torch.randn(3, 1, (heads + 2 * kv_heads) * dim, dtype=dtype, device=device) * 4
            q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
            cos, sin = fused.rotary_tables(positions[:, :1], dim, dtype)
            want_q, want_k = fused.rope_torch(q.clone(), k.clone(), cos, sin, dim)
            caches = [torch.randn(4, kv_heads, 9, dim, dtype=dtype, device=device) for _ in range(2)]
            column = torch.tensor([6], device=device)
            want_kc, want_vc = (c.clone() for c in caches)
            want_kc[:3].index_copy_(2, column, want_k)
            want_vc[:3].index_copy_(2, column, v.view(3, 1, kv_heads, dim).transpose(1, 2))
            got_q = fused.rope_store(q, k, v, cos, sin, dim, *caches, column)
            used = got_q is not None
            if used:
                for name, g, e in (
                    ("q", got_q, want_q),
                    ("k_cache", caches[0], want_kc),
                    ("v_cache", caches[1], want_vc),
                ):
                    out.append(_diff(f"rope_store_{name}", dtype, g, e, used) | {"heads": [heads, kv_heads]})
        out += check_decode_attention(device, dtype)
        out += check_greedy_tail(device, dtype)
    return out


def _tail_buffers(rows: int, table, dtype, device) -> list:
    """chosen, tokens, positions (39 + 1: past a 40-row table's end), column, the table, rotary rows."""
    import torch

    return [torch.zeros(3, rows, dtype=torch.float64, device=device), torch.zeros(rows, dtype=torch.long, device=device),
            torch.tensor([0, 3, 17, 38, 39, 39], device=device), torch.tensor([12], device=device),
            table, torch.zeros(rows, table.shape[1], dtype=dtype, device=device)]  # fmt: skip


def check_greedy_tail(device: str, dtype) -> list[dict]:
    """The static decode step's last kernel (`decode_step.greedy_tail`) against its torch operations
    (`greedy_tail_torch`): fp32 logits, argmax (ties planted: the first index wins), the chosen logprob,
    finiteness (a row with inf), the next positions, column and rotary rows (one past the table: clamped)."""
    from evaluation.engine.server import decode_step

    out = []
    # Blocks of 4,096 (the default): 1,000 logits in one part, 32,000 in 8; of 8,192: 40,000 in 5
    # (padded to 8) with the ties in parts 0 and 4; of 32,768: 32,000 in one part, 40,000 in two.
    for vocab, block in ((1000, 4096), (32000, 4096), (40000, 8192), (32000, 32768), (40000, 32768)):
        with _greedy_block(block):
            block_used, _, parts = decode_step.greedy_shape(vocab)
            out.append(_check_greedy_tail(device, dtype, vocab) | {"block": block_used, "parts": parts})
    return out


@contextlib.contextmanager
def _greedy_block(block: int):
    """`ENGINE_GREEDY_BLOCK` set to `block` for the calls inside."""
    from evaluation.engine.server import decode_step

    default, decode_step.GREEDY_BLOCK = decode_step.GREEDY_BLOCK, block
    try:
        yield
    finally:
        decode_step.GREEDY_BLOCK = default


def _check_greedy_tail(device: str, dtype, vocab: int) -> dict:
    import torch

    from evaluation.engine.server import decode_step

    rows = 6
    logits = torch.randn(rows, vocab, device=device).mul(4).to(dtype)
    logits[1, [7, vocab - 3]] = 30.0  # equal largest values, in different blocks
    logits[2, [5, 6]] = 30.0  # and in one block
    logits[3, 11] = float("inf")
    table = torch.randn(40, 128, device=device).to(dtype)

    got_buffers, want_buffers = (_tail_buffers(rows, table, dtype, device) for _ in range(2))
    used = decode_step.kernel_applies(logits, got_buffers[0], table, got_buffers[5])
    got = decode_step.greedy_tail(logits, *got_buffers, decode_step.greedy_parts(rows, vocab, logits.device))
    want = decode_step.greedy_tail_torch(logits, *want_buffers)
    (chosen, tokens, positions, column, _, now), (want_chosen, *want_rest) = got_buffers, want_buffers
    ok = want_chosen[2].bool()
    return {
        "op": "greedy_tail", "dtype": str(dtype).removeprefix("torch."), "triton": used, "vocab": vocab,
        "logits_unequal": int((got != want).sum()),
        "tokens_equal": int((chosen[0] == want_chosen[0])[ok].sum()), "finite_rows": int(ok.sum()),
        "ties_first": [int(chosen[0, 1]), int(chosen[0, 2])],
        "logprob_max_diff": float((chosen[1] - want_chosen[1])[ok].abs().max()),
        "finite_equal": bool((chosen[2] == want_chosen[2]).all()),
        "next_tokens_equal": bool((tokens == want_rest[0]).all()),
        "positions_equal": bool((positions == want_rest[1]).all()), "column": int(column),
        "rotary_unequal": int((now != want_rest[4]).sum()),
    }  # fmt: skip


def _merge_ways(attend, merged_inside, counts, used: bool) -> list[dict]:
    """The same attention with the merge kernel (`ENGINE_ATTEND_MERGE=0`), against the last split's
    merge: how many merge kernels each launched, and how far apart they are (the same sums in
    another order); the counts of finished splits back at zero."""
    from evaluation.engine.server import decode_attention

    launched = []
    real = decode_attention._merge_splits_kernel

    class Spy:
        def __getitem__(self, grid):
            launched.append(grid)
            return real[grid]

    rows, saved = [], decode_attention.merge_inside
    decode_attention._merge_splits_kernel = Spy()
    try:
        for inside in (True, False):
            decode_attention.merge_inside, launched[:] = inside, []
            got = attend()
            rows.append(
                _diff("decode_attention_merge", got.dtype, got, merged_inside, used)
                | {"inside": inside, "merge_kernels": len(launched), "counts_zero": bool(counts.eq(0).all())}
            )
    finally:
        decode_attention._merge_splits_kernel, decode_attention.merge_inside = real, saved
    return rows


def _loads_in_loop(attend, ahead, used: bool) -> dict:
    """The same attention with each block's keys and values loaded in its own iteration
    (`ENGINE_ATTEND_AHEAD=0`) against an iteration ahead: the same loads and sums, so bitwise."""
    from evaluation.engine.server import decode_attention

    saved, decode_attention.load_ahead = decode_attention.load_ahead, False
    try:
        got = attend()
    finally:
        decode_attention.load_ahead = saved
    return _diff("decode_attention_loads_in_loop", got.dtype, got, ahead, used)


def check_decode_attention(device: str, dtype) -> list[dict]:
    """The decode step's attention over each row's filled columns against SDPA over the mask the
    bounds describe; every column outside them holds NaN for the kernel (it must not read them) and
    zero for SDPA. Sums in another order: compared by their largest difference. Then the same with the
    step's rotary embedding and cache write in the kernel (`rope_attend`): the rotated key and the
    value it writes at the step's column against `fused.rope_torch`'s."""
    import torch

    from evaluation.engine.server import decode_attention, fused

    out = []
    device = torch.device(device)
    for heads, kv_heads, dim, splits in ((8, 2, 32, 1), (8, 2, 32, 3), (32, 32, 128, None), (32, 4, 64, None)):
        rows, columns, column = 5, 200, 150
        step = torch.tensor([column], device=device)
        # a prefix and a suffix; none; an empty suffix (the step's column alone); a long one; a padding row
        bounds = torch.tensor([[3, 40, 60], [0, 0, 10], [20, 90, column], [0, 0, 0], [0, 0, column]], device=device)
        q = torch.randn(rows, 1, heads * dim, dtype=dtype, device=device).view(rows, 1, heads, dim).transpose(1, 2)
        keys, values = (torch.randn(rows, kv_heads, columns, dim, dtype=dtype, device=device) for _ in range(2))
        filled = decode_attention.bounds_mask(bounds, step, columns)
        for cache in (keys, values):
            cache.masked_fill_(~filled[:, None, :, None], 0.0)
        want = decode_attention.attend_torch(q, keys, values, bounds, step, dim**-0.5)
        # The projections' outputs of the step (a joined product's column slices) and its rotary embedding.
        qkv = torch.randn(rows, 1, (heads + 2 * kv_heads) * dim, dtype=dtype, device=device) * 4
        new_q, new_k, new_v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
        cos, sin = fused.rotary_tables(torch.arange(rows, device=device)[:, None] * 7 + 300, dim, dtype)
        want_caches = [keys.clone(), values.clone()]
        want_rope = decode_attention.rope_attend_torch(new_q, new_k, new_v, cos, sin, *want_caches, bounds, step,
                                                       dim**-0.5)  # fmt: skip
        for cache in (keys, values):
            cache.masked_fill_(~filled[:, None, :, None], float("nan"))
        work = decode_attention.Workspace(rows, heads, kv_heads, columns, dim, device, splits=splits)
        got = decode_attention.attend(q, keys, values, bounds, step, dim**-0.5, work)
        used = got is not None and fused._use_triton(q)
        if got is None:
            got = want
        shape = {"heads": [heads, kv_heads], "splits": work.splits}
        out.append(
            _diff("decode_attention", dtype, got, want, used) | shape | {"finite": bool(torch.isfinite(got).all())}
        )
        attend = functools.partial(decode_attention.attend, q, keys, values, bounds, step, dim**-0.5, work)
        if work.splits > 1:  # the last split merges (the default) against the merge kernel
            out += _merge_ways(attend, got, work.count, used)
        out.append(_loads_in_loop(attend, got, used) | shape)
        for cache in (keys, values):
            cache[:, :, column] = float("nan")  # the kernel writes it before any read
        got = decode_attention.rope_attend(new_q, new_k, new_v, cos, sin, keys, values, bounds, step, dim**-0.5, work)
        used = got is not None and fused._use_triton(new_q)
        if got is None:
            got, keys, values = want_rope, *want_caches
        out.append(
            _diff("rope_attend", dtype, got, want_rope, used) | shape | {"finite": bool(torch.isfinite(got).all())}
        )
        for name, cache, expected in (
            ("rope_attend_k_cache", keys, want_caches[0]),
            ("rope_attend_v_cache", values, want_caches[1]),
        ):
            out.append(_diff(name, dtype, cache[:, :, column], expected[:, :, column], used) | shape)
        # Folded norms (folded.py): q, k, v the products of the raw residual rows, scaled by the kernel.
        residual = torch.randn(rows, 1, 1024, dtype=dtype, device=device) * 3
        scale_of = (residual, 1e-5)
        want_caches = [keys.nan_to_num(0.0), values.nan_to_num(0.0)]  # the NaNs stand outside the bounds
        want_folded = decode_attention.rope_attend_torch(new_q, new_k, new_v, cos, sin, *want_caches, bounds, step,
                                                         dim**-0.5, scale_of)  # fmt: skip
        got = decode_attention.rope_attend(new_q, new_k, new_v, cos, sin, keys, values, bounds, step, dim**-0.5, work,
                                           scale_of)  # fmt: skip
        used = got is not None and fused._use_triton(new_q)
        if got is None:
            got, keys, values = want_folded, *want_caches
        finite = {"finite": bool(torch.isfinite(got).all())}
        out.append(_diff("rope_attend_folded", dtype, got, want_folded, used) | shape | finite)
        for name, cache, expected in (
            ("rope_attend_folded_k_cache", keys, want_caches[0]),
            ("rope_attend_folded_v_cache", values, want_caches[1]),
        ):
            out.append(_diff(name, dtype, cache[:, :, column], expected[:, :, column], used) | shape)
        # The server's warm-up check (`verify_rope_attend`) at these shapes.
        why = decode_attention.rope_attend_disagreement(heads, kv_heads, dim, dtype, device, scaled=True)
        out.append({"op": "rope_attend_warm_up_check", "dtype": str(dtype).removeprefix("torch."), "triton": used,
                    "heads": [heads, kv_heads], "agrees": why is None, "why": why})  # fmt: skip
    return out


def check_model(device: str, dtype_name: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from evaluation.engine.server import fused

    dtype = getattr(torch, dtype_name)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    ids = torch.randint(0, 512, (4, 33), device=device)
    calls = []
    forward = fused.fused_forward
    fused.fused_forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    try:
        with torch.inference_mode():
            plain = model(ids).logits.float()
            assert fused.install(model)
            with fused.active(model):
                got = model(ids).logits.float()
    finally:
        fused.fused_forward = forward
    return {
        "positions": ids.numel(), "argmax_equal": int((got.argmax(-1) == plain.argmax(-1)).sum()),
        "max_abs_logit_diff": float((got - plain).abs().max()), "fused_layers_called": len(calls),
        "triton": not fused._triton_failed and fused._use_triton(got.to(dtype)),
        "static_decode": check_static_decode(model, ids[:, :20], steps=5),
    }  # fmt: skip


def check_static_decode(model, prompt, steps: int) -> dict:
    """Fused static-cache decode steps (deferred residual sums, keys rotated into the cache) against
    Hugging Face's own decode steps over its cache, fed the same tokens."""
    import torch

    from evaluation.engine.server import decode_attention, fused
    from evaluation.engine.server.static_decode import StaticDecoder

    rows, width = prompt.shape
    stores = []
    store, rope_attend = fused.rope_store, decode_attention.rope_attend

    def counted(function):
        def call(*args):
            out = function(*args)
            stores.append(out is not None)
            return out

        return call

    # The step's keys go into the cache from a kernel: the rotary one, or the attention's own.
    fused.rope_store, decode_attention.rope_attend = counted(store), counted(rope_attend)
    try:
        with torch.inference_mode():
            out = model(prompt, use_cache=True)
            tokens = out.logits[:, -1].argmax(-1)
            decoder = StaticDecoder(model, use_graphs=False)
            with fused.active(model):
                decoder.start(out.past_key_values, torch.ones_like(prompt), torch.full((rows,), width), steps)
                fed, got = [], []
                for _ in range(steps):
                    fed.append(tokens)
                    logits = decoder.step(tokens.tolist())
                    got.append(logits)
                    tokens = logits.argmax(-1)
            cache, want = out.past_key_values, []
            for i, token in enumerate(fed):
                step = model(token[:, None], past_key_values=cache, use_cache=True,
                             position_ids=torch.full((rows, 1), width + i, device=prompt.device))  # fmt: skip
                cache = step.past_key_values
                want.append(step.logits[:, -1].float())
    finally:
        fused.rope_store, decode_attention.rope_attend = store, rope_attend
    got, want = torch.stack(got), torch.stack(want)
    return {
        "positions": got.shape[0] * got.shape[1], "argmax_equal": int((got.argmax(-1) == want.argmax(-1)).sum()),
        "max_abs_logit_diff": float((got - want).abs().max()), "cache_writes_fused": sum(stores),
    }  # fmt: skip


def time_layers() -> list[dict]:
    """One bf16 decoder layer, Hugging Face's forward against the fused one, each as a CUDA graph."""
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    from benchmarks.engine_speed import SIZES
    from evaluation.engine.server import fused
    from evaluation.engine.server.cuda_graphs import replayed_ms

    results = []
    for size in ("1b", "7b"):
        hidden, _, heads, kv_heads, inter = SIZES[size]
        config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                             num_key_value_heads=kv_heads, num_hidden_layers=1)  # fmt: skip
        config._attn_implementation = "sdpa"
        torch.manual_seed(0)
        with torch.device("cuda"):
            layer = LlamaDecoderLayer(config, 0).to(torch.bfloat16).eval()
            rotary = LlamaRotaryEmbedding(config)
        holder = torch.nn.Module()
        holder.config, holder.model = config, torch.nn.Module()
        holder.model.layers = torch.nn.ModuleList([layer])
        assert fused.install(holder)
        for rows, tokens in ((16, 1), (64, 1), (1, 4096)):
            x = torch.randn(rows, tokens, hidden, dtype=torch.bfloat16, device="cuda")
            positions = torch.arange(tokens, device="cuda")[None].expand(rows, tokens)
            pe = rotary(x, positions)
            row = {"size": size, "rows": rows, "tokens": tokens}
            outs = {}
            for name, on in (("hf", False), ("fused", True)):
                fused.switched_on = on

                def run(layer=layer, holder=holder, x=x, positions=positions, pe=pe):
                    with fused.active(holder):
                        return layer(x, attention_mask=None, position_ids=positions, position_embeddings=pe)

                with torch.inference_mode():
                    row[f"{name}_ms"], outs[name] = replayed_ms(run, replays=20)
            fused.switched_on = True
            row["speedup"] = row["hf_ms"] / row["fused_ms"]
            row["max_abs_diff"] = float((outs["hf"].float() - outs["fused"].float()).abs().max())
            row["unequal_share"] = float((outs["hf"] != outs["fused"]).float().mean())
            results.append(row)
        del layer, holder
        torch.cuda.empty_cache()
    return results


def write_report(path, **fields) -> None:
    """The GPU's name and `fields` as JSON at `path` (a Path, or None: nothing written)."""
    import torch

    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), **fields)))


def time_decode_attention() -> list[dict]:
    """One layer's decode-step attention, bf16: SDPA through the static decoder's mask (as before
    session 12) against the kernel over each row's filled columns; the rows' prompts fill about half
    of the buffer's columns, as a generation batch's do midway. GB/s: the filled keys and values read."""
    import torch

    from evaluation.engine.server import decode_attention
    from evaluation.engine.server.attention import grouped_attention
    from evaluation.engine.server.cuda_graphs import replayed_ms

    results = []
    device = torch.device("cuda")
    for size, rows, heads, kv_heads, dim, columns in (("6.7b", 24, 32, 32, 128, 384), ("1.1b", 64, 32, 4, 64, 384)):
        torch.manual_seed(0)
        q = torch.randn(rows, heads, 1, dim, dtype=torch.bfloat16, device=device)
        keys, values = (
            torch.randn(rows, kv_heads, columns, dim, dtype=torch.bfloat16, device=device) for _ in range(2)
        )
        widths = torch.randint(60, 190, (rows,), device=device)
        column = torch.tensor([190 + 64], device=device)
        bounds = torch.stack([torch.zeros_like(widths), torch.zeros_like(widths), 190 - widths], dim=1)
        mask = decode_attention.bounds_mask(bounds, column, columns)[:, None, None, :]
        bias = torch.zeros(mask.shape, dtype=torch.bfloat16, device=device).masked_fill_(~mask, float("-inf"))
        module = type("Attn", (), {"is_causal": False, "training": False})()
        work = decode_attention.Workspace(rows, heads, kv_heads, columns, dim, device)
        with torch.inference_mode():
            masked = functools.partial(grouped_attention, module, q, keys, values, bias, scaling=dim**-0.5)
            by_bounds = functools.partial(decode_attention.attend, q, keys, values, bounds, column, dim**-0.5, work)
            (sdpa_ms, _), (ours_ms, _) = replayed_ms(masked), replayed_ms(by_bounds)
            want, got = masked()[0], by_bounds()
        filled = int(mask.sum()) * kv_heads * dim * 2 * 2
        results.append({
            "size": size, "rows": rows, "columns": columns, "filled_share": float(mask.float().mean()),
            "splits": work.splits, "sdpa_mask_ms": sdpa_ms, "bounds_ms": ours_ms,
            "bounds_gb_s": filled / ours_ms / 1e6, "max_abs_diff": float((got.float() - want.float()).abs().max()),
        })  # fmt: skip
    return results


def time_greedy_tail(rows: int = 50, vocab: int = 32000) -> list[dict]:
    """A decode step's last kernel (`decode_step.greedy_tail`) at a 1.1 B step's shape, bf16, at each
    `ENGINE_GREEDY_BLOCK` (a program a block of a row; 4,096: the default, 8 parts of a 32,000-token row;
    32,768: one): µs a call, 20 calls a replayed graph."""
    import torch

    from evaluation.engine.server import decode_step
    from evaluation.engine.server.cuda_graphs import replayed_ms

    device = torch.device("cuda")
    torch.manual_seed(0)
    head = torch.randn(rows, vocab, device=device).mul(4).to(torch.bfloat16)
    table = torch.randn(4096, 128, device=device).to(torch.bfloat16)
    buffers = [torch.zeros(3, rows, dtype=torch.float64, device=device), torch.zeros(rows, dtype=torch.long, device=device),
               torch.zeros(rows, dtype=torch.long, device=device), torch.zeros(1, dtype=torch.long, device=device),
               table, torch.zeros(rows, 128, dtype=torch.bfloat16, device=device)]  # fmt: skip
    results = []
    for block in (2048, 4096, 8192, 16384, 32768):
        with _greedy_block(block), torch.inference_mode():
            parts = decode_step.greedy_parts(rows, vocab, device)
            ms, _ = replayed_ms(lambda p=parts: [decode_step.greedy_tail(head, *buffers, p) for _ in range(20)])
            block_used, warps, count = decode_step.greedy_shape(vocab)
        results.append({"rows": rows, "vocab": vocab, "block": block_used, "warps": warps, "parts": count,
                        "us": ms * 1000 / 20})  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--check-only", action="store_true", help="no timings")
    p.add_argument("--out")
    args = p.parse_args(argv)
    report = {"device": args.device, "checks": check_kernels(args.device)}
    dtypes = ["float16"] + (["bfloat16"] if args.device == "cuda" else [])
    report["model"] = {d: check_model(args.device, d) for d in dtypes}
    if not args.check_only and args.device == "cuda":
        report["layers"] = time_layers()
        report["decode_attention"] = time_decode_attention()
        report["greedy_tail"] = time_greedy_tail()
        for row in report["greedy_tail"]:
            print(
                f"greedy tail {row['rows']}×{row['vocab']}, block {row['block']} × {row['parts']}: {row['us']:.2f} µs",
                file=sys.stderr,
            )
        for row in report["decode_attention"]:
            print(f"decode attention {row['size']} {row['rows']} rows: mask {row['sdpa_mask_ms']:.3f} ms, "
                  f"bounds {row['bounds_ms']:.3f} ms", file=sys.stderr)  # fmt: skip
        for row in report["layers"]:
            print(f"{row['size']} {row['rows']}×{row['tokens']}: HF {row['hf_ms']:.3f} ms, fused "
                  f"{row['fused_ms']:.3f} ms ({row['speedup']:.2f}×)", file=sys.stderr)  # fmt: skip
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
