"""A static decode step's attention over each row's filled columns only.

The static decoder's cache has one fixed number of columns per batch (static_decode.py): room for
the widest prompt and the most new tokens, so that one captured graph serves every step. Attending
through a mask, every step read every column of every row: columns no step has written yet, the
left padding of shorter prompts, the row bucket's padding rows, and the mask. Here a row's keys are
described by three numbers held on the GPU (`bounds`): its stored prefix's columns [a1, b1) and its
own tokens' [a2, column], `column` being the step's own (a device tensor too). Every row's mask has
that shape, as the prefill builds it (a prefix right-aligned to a common width, then the suffix
padded on the left, then the new tokens); `row_bounds` checks it and the decoder keeps the mask for
a batch whose rows do not. So the graph captured once reads, at each replay, the columns the step
needs and no more.

The kernel splits each row's columns among `splits` programs per key/value head (more of them when
a batch has few rows, so that the GPU's SMs all work), each with the query heads of its group as the
rows of one product; the last of a row's splits to finish merges the parts by their log-sum-exp
(session 30; before, a second kernel did, as `ENGINE_ATTEND_MERGE=0` still has it). The same sums as any attention, in
another order: a bf16 step's values differ from SDPA's by rounding. Triton on CUDA for half
precision; `attend_torch` is the same attention through SDPA and the mask the bounds describe (the
tests' reference, and the decoder's path when `everywhere` is set on the CPU).

`rope_attend` (session 13) takes the step's queries, key and value straight from the projections:
each program rotates its queries and the step's key as `fused.rope` does (the same roundings), the
first split writes the rotated key and the value into the cache at the step's column, and the last
split adds that key and value from registers. One kernel a layer fewer than the rotary kernel's
cache write (`fused.rope_store`) followed by `attend`, which serve where it does not apply, and
wherever the server's warm-up found it disagreeing with them on the GPU at hand (`verify_rope_attend`).
"""

from __future__ import annotations

import functools
import logging
import math
import os

import torch

from evaluation.engine.server import folded, fused
from evaluation.engine.server.attention import attention_shape

log = logging.getLogger(__name__)


def _launch_settings() -> tuple[int, dict[str, int]]:
    """The key block and Triton's launch options (num_warps, num_stages) for the attention kernel: 64
    and Triton's defaults unless `ENGINE_ATTEND_BLOCK`, `ENGINE_ATTEND_WARPS`, `ENGINE_ATTEND_STAGES`
    say otherwise (benchmarks/attention_configs.py sweeps them; whole runs try its best). A value out
    of range is logged and left out."""
    values = {}
    for name, key, allowed in (("ENGINE_ATTEND_BLOCK", "block", (16, 32, 64, 128, 256)),
                               ("ENGINE_ATTEND_WARPS", "num_warps", (1, 2, 4, 8, 16)),
                               ("ENGINE_ATTEND_STAGES", "num_stages", (1, 2, 3, 4, 5))):  # fmt: skip
        text = os.environ.get(name, "").strip()
        if text.isdigit() and int(text) in allowed:
            values[key] = int(text)
        elif text:
            log.warning("%s=%r is not one of %s: the default kept", name, text, ", ".join(map(str, allowed)))
    return values.pop("block", 64), values


BLOCK_N, LAUNCH_OPTIONS = _launch_settings()
MAX_SPLITS = 16
# Several splits a row: the last to finish merges them (`attend_program`'s MERGE), not a second kernel;
# `ENGINE_ATTEND_MERGE=0` keeps the merge kernel (benchmarks compare the two).
merge_inside = os.environ.get("ENGINE_ATTEND_MERGE", "1") != "0"
# Each block of keys and values loaded an iteration ahead by hand (session 29); `ENGINE_ATTEND_AHEAD=0`
# loads each in its own iteration and leaves the early loads to Triton's pipeliner (num_stages).
load_ahead = os.environ.get("ENGINE_ATTEND_AHEAD", "1") != "0"
everywhere = False  # tests: the torch reference wherever the kernel would not run (CPU, fp32)
# The step's rotary embedding and cache write inside the attention kernel (`rope_attend`); benchmarks
# turn it off to compare (`ENGINE_ROPE_ATTEND=0`: the rotary kernel writes the cache, then `attend`).
rope_inside = os.environ.get("ENGINE_ROPE_ATTEND", "1") != "0"

if fused.triton is not None:
    import triton
    import triton.language as tl

    @triton.jit
    def _kv_block(k_base, v_base, first, hi, n1, a1, a2, h, d, DIM: tl.constexpr, BLOCK: tl.constexpr):
        """A block of a row's cached keys (in halves) and values from its `first` key on: the prefix's
        columns [a1, a1 + n1), then its own from a2; zeros from its `hi`-th key on (no memory read)."""
        HALF: tl.constexpr = DIM // 2
        j = first + tl.arange(0, BLOCK)
        keep = (j < hi)[:, None]
        column = tl.where(j < n1, a1 + j, a2 + j - n1).to(tl.int64)
        k_at = k_base + column[:, None] * DIM + h[None, :]
        return (tl.load(k_at, mask=keep, other=0.0), tl.load(k_at + HALF, mask=keep, other=0.0),
                tl.load(v_base + column[:, None] * DIM + d[None, :], mask=keep, other=0.0))  # fmt: skip

    # `splits` varies with a batch's rows: a number, not a constant, or every new count would compile a
    # kernel of its own inside a batch (session 12: 0.65-0.9 s of a 1.1 B evaluation's first captures).
    @triton.jit(do_not_specialize=["splits"])
    def _attend_kernel(
        q_ptr, k_ptr, v_ptr, bounds_ptr, col_ptr, out_ptr, part_ptr, lse_ptr,
        q_row, q_head, k_row, k_head, v_row, v_head, out_row, out_head, heads, scale, splits,
        new_k_ptr, new_v_ptr, cos_ptr, sin_ptr, new_k_row, new_v_row, cos_row, res_ptr, res_n, inv_n, eps,
        count_ptr, GROUP: tl.constexpr, G_PAD: tl.constexpr, DIM: tl.constexpr, BLOCK: tl.constexpr,
        ONE: tl.constexpr, ROPE: tl.constexpr, EXACT: tl.constexpr, SCALED: tl.constexpr = False,
        BLOCK_H: tl.constexpr = 16, MERGE: tl.constexpr = False, AHEAD: tl.constexpr = True,
    ):  # fmt: skip
        attend_program(
            tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2),
            q_ptr, k_ptr, v_ptr, bounds_ptr, col_ptr, out_ptr, part_ptr, lse_ptr,
            q_row, q_head, k_row, k_head, v_row, v_head, out_row, out_head, heads, scale, splits,
            new_k_ptr, new_v_ptr, cos_ptr, sin_ptr, new_k_row, new_v_row, cos_row, res_ptr, res_n, inv_n, eps,
            GROUP, G_PAD, DIM, BLOCK, ONE, ROPE, EXACT, SCALED, BLOCK_H, count_ptr, MERGE, AHEAD,
        )  # fmt: skip

    @triton.jit
    def attend_program(
        row, kv, split, q_ptr, k_ptr, v_ptr, bounds_ptr, col_ptr, out_ptr, part_ptr, lse_ptr,
        q_row, q_head, k_row, k_head, v_row, v_head, out_row, out_head, heads, scale, splits,
        new_k_ptr, new_v_ptr, cos_ptr, sin_ptr, new_k_row, new_v_row, cos_row, res_ptr, res_n, inv_n, eps,
        GROUP: tl.constexpr, G_PAD: tl.constexpr, DIM: tl.constexpr, BLOCK: tl.constexpr, ONE: tl.constexpr,
        ROPE: tl.constexpr, EXACT: tl.constexpr, SCALED: tl.constexpr, BLOCK_H: tl.constexpr,
        count_ptr=None, MERGE: tl.constexpr = False, AHEAD: tl.constexpr = True,
    ):  # fmt: skip
        """One program's work: a row's (int64) query heads of key/value head `kv`, over its `split`-th
        share of the columns (a function, so that a persistent kernel can run it too). MERGE: the last
        of a row and head's splits to finish (a count a row and key/value head, `count_ptr`) merges
        their parts into the output, in split order, instead of `_merge_splits_kernel`. AHEAD: each
        block of keys and values is loaded an iteration ahead by hand (`load_ahead`)."""
        HALF: tl.constexpr = DIM // 2
        a1 = tl.load(bounds_ptr + row * 3).to(tl.int32)
        b1 = tl.load(bounds_ptr + row * 3 + 1).to(tl.int32)
        a2 = tl.load(bounds_ptr + row * 3 + 2).to(tl.int32)
        step = tl.load(col_ptr).to(tl.int32)
        n1 = b1 - a1
        # The row's keys in the cache: its prefix's, then its own up to the step's column (ROPE: up to
        # the one before; the step's own key is rotated here, written by split 0, added by the last split).
        if ROPE:
            n = n1 + step - a2
        else:
            n = n1 + step - a2 + 1
        per = tl.cdiv(tl.cdiv(n, splits), BLOCK) * BLOCK
        lo = split * per
        hi = tl.minimum(n, lo + per)
        g = tl.arange(0, G_PAD)
        h = tl.arange(0, HALF)
        d = tl.arange(0, DIM)
        head = kv * GROUP + g
        in_group = g < GROUP
        dt = k_ptr.dtype.element_ty
        # Each query in halves (rotary embeddings pair element i with i + DIM/2).
        q_at = q_ptr + row * q_row + head[:, None] * q_head + h[None, :]
        q1 = tl.load(q_at, mask=in_group[:, None], other=0.0)
        q2 = tl.load(q_at + HALF, mask=in_group[:, None], other=0.0)
        k_base = k_ptr + row * k_row + kv * k_head
        v_base = v_ptr + row * v_row + kv * v_head
        # Every load that needs no other first is issued here, the first block of keys and values
        # included: each waits on memory, and the norm's factor below waits on the residual row's loads.
        if AHEAD:
            k1, k2, v = _kv_block(k_base, v_base, lo, hi, n1, a1, a2, h, d, DIM, BLOCK)
        if ROPE:  # q, the step's key and value straight from the projections, rotated as `fused.rope` does
            trig = row * cos_row + h
            c1 = tl.load(cos_ptr + trig).to(tl.float32)
            c2 = tl.load(cos_ptr + trig + HALF).to(tl.float32)
            s1 = tl.load(sin_ptr + trig).to(tl.float32)
            s2 = tl.load(sin_ptr + trig + HALF).to(tl.float32)
            new_k = new_k_ptr + row * new_k_row + kv * DIM + h
            k1_new, k2_new = tl.load(new_k), tl.load(new_k + HALF)
            v_new = tl.load(new_v_ptr + row * new_v_row + kv * DIM + d)
        if SCALED:  # a folded norm (folded.py): the projections read the raw residual row
            row_scale = fused._row_scale(res_ptr, row, res_n, inv_n, eps, BLOCK_H, EXACT)
            q1 = (q1.to(tl.float32) * row_scale).to(dt)
            q2 = (q2.to(tl.float32) * row_scale).to(dt)
            if ROPE:
                k1_new = (k1_new.to(tl.float32) * row_scale).to(dt)
                k2_new = (k2_new.to(tl.float32) * row_scale).to(dt)
                v_new = (v_new.to(tl.float32) * row_scale).to(dt)
        if ROPE:
            q1, q2 = fused._rotated(q1.to(tl.float32), q2.to(tl.float32), c1[None, :], c2[None, :], s1[None, :],
                                    s2[None, :], dt, EXACT)  # fmt: skip
            k1_new, k2_new = fused._rotated(k1_new.to(tl.float32), k2_new.to(tl.float32), c1, c2, s1, s2, dt, EXACT)
            if split == 0:  # no program reads the step's column from the cache
                tl.store(k_base + step * DIM + h, k1_new)
                tl.store(k_base + step * DIM + HALF + h, k2_new)
                tl.store(v_base + step * DIM + d, v_new)
        m_i = tl.full([G_PAD], float("-inf"), tl.float32)
        l_i = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, DIM], tl.float32)
        for start in range(lo, hi, BLOCK):
            valid = start + tl.arange(0, BLOCK) < hi
            if AHEAD:  # the next block's loads go out before this block's arithmetic (masked off past the last)
                k1_next, k2_next, v_next = _kv_block(k_base, v_base, start + BLOCK, hi, n1, a1, a2, h, d, DIM, BLOCK)
            else:  # this block's, where Triton's pipeliner (num_stages) can issue them early
                k1, k2, v = _kv_block(k_base, v_base, start, hi, n1, a1, a2, h, d, DIM, BLOCK)
            s = (tl.dot(q1, tl.trans(k1)) + tl.dot(q2, tl.trans(k2))) * scale
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: the block's first key is valid
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(dt), v)
            m_i = m_new
            if AHEAD:
                k1, k2, v = k1_next, k2_next, v_next
        if ROPE:
            if split == splits - 1:  # the step's own key and value, from registers
                own = tl.sum(q1.to(tl.float32) * k1_new.to(tl.float32)[None, :], 1)
                own = (own + tl.sum(q2.to(tl.float32) * k2_new.to(tl.float32)[None, :], 1)) * scale
                m_new = tl.maximum(m_i, own)
                alpha = tl.exp(m_i - m_new)
                p_own = tl.exp(own - m_new)
                l_i = l_i * alpha + p_own
                acc = acc * alpha[:, None] + p_own.to(dt).to(tl.float32)[:, None] * v_new.to(tl.float32)[None, :]
                m_i = m_new
        empty = l_i == 0.0  # a split past the row's last key
        l_i = tl.where(empty, 1.0, l_i)
        o = acc / l_i[:, None]
        if ONE:  # one split a row: the output itself
            out = out_ptr + row * out_row + head[:, None] * out_head + d[None, :]
            tl.store(out, o.to(out_ptr.dtype.element_ty), mask=in_group[:, None])
        else:
            part = (row * heads + head) * splits + split
            tl.store(lse_ptr + part, tl.where(empty, float("-inf"), m_i + tl.log(l_i)), mask=in_group)
            tl.store(part_ptr + part[:, None] * DIM + d[None, :], o, mask=in_group[:, None])
            if MERGE:
                tl.debug_barrier()  # every thread's stores before the release below
                counter = count_ptr + row * (heads // GROUP) + kv
                if tl.atomic_add(counter, 1, sem="acq_rel") == splits - 1:
                    _merge_parts(part - split, lse_ptr, part_ptr, out_ptr + row * out_row + head[:, None] * out_head,
                                 in_group, splits, G_PAD, DIM)  # fmt: skip
                    tl.store(counter, 0)  # ready for the next layer

    @triton.jit
    def _merge_parts(first, lse_ptr, part_ptr, out_at, in_group, splits, G_PAD: tl.constexpr, DIM: tl.constexpr):
        """out = the splits' parts weighted by their exp(lse), in split order, for a group's heads
        (`first`: each head's first part); an empty split's -inf weighs 0 (a row has a key: one is not)."""
        d = tl.arange(0, DIM)
        top = tl.load(lse_ptr + first, mask=in_group, other=0.0, volatile=True)
        for s in range(1, splits):
            top = tl.maximum(top, tl.load(lse_ptr + first + s, mask=in_group, other=0.0, volatile=True))
        total = tl.zeros_like(top)
        acc = tl.zeros([G_PAD, DIM], tl.float32)
        for s in range(0, splits):
            weight = tl.exp(tl.load(lse_ptr + first + s, mask=in_group, other=0.0, volatile=True) - top)
            part = tl.load(part_ptr + (first + s)[:, None] * DIM + d[None, :], mask=in_group[:, None], other=0.0,
                           volatile=True)  # fmt: skip
            acc += weight[:, None] * part
            total += weight
        o = acc / tl.where(in_group, total, 1.0)[:, None]
        tl.store(out_at + d[None, :], o.to(out_at.dtype.element_ty), mask=in_group[:, None])

    @triton.jit(do_not_specialize=["splits"])
    def _merge_splits_kernel(
        part_ptr, lse_ptr, out_ptr, out_row, out_head, heads, splits, GROUP: tl.constexpr, G_PAD: tl.constexpr,
        DIM: tl.constexpr,
    ):  # fmt: skip
        """`ENGINE_ATTEND_MERGE=0`: a program a row and key/value head merges its group's splits."""
        row = tl.program_id(0).to(tl.int64)
        g = tl.arange(0, G_PAD)
        head = tl.program_id(1) * GROUP + g
        _merge_parts((row * heads + head) * splits, lse_ptr, part_ptr, out_ptr + row * out_row + head[:, None] * out_head,
                     g < GROUP, splits, G_PAD, DIM)  # fmt: skip


def applies(like: torch.Tensor, model) -> bool:
    """Whether a static decoder of this cache (its dtype and device) and model attends by bounds: the
    fused layers call `rope_attend` (or `attend`), and the kernel runs (CUDA, half precision) or `everywhere` is set.
    `ENGINE_BOUNDED_DECODE=0` keeps the mask (benchmarks compare the two)."""
    return _bounded_setting() and fused.runs_fused(model) and (everywhere or fused._use_triton(like))


def _bounded_setting() -> bool:
    return os.environ.get("ENGINE_BOUNDED_DECODE", "1") != "0"


def row_bounds(mask: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(bounds [rows, 3] int64: a1, b1, a2 per row, whether every row's mask [rows, width] has the
    shape they describe: ones at [a1, b1) and from a2 to its end, zeros elsewhere). One host sync."""
    mask = mask.bool()
    rows, width = mask.shape
    columns = torch.arange(width, device=mask.device)
    # a2: where the row's last run of ones starts (width when its last column is masked).
    trailing = mask.flip(1).long().cumprod(1).sum(1)
    a2 = width - trailing
    before = mask & (columns[None, :] < a2[:, None])
    count = before.sum(1)
    a1 = torch.where(before, columns[None, :], width).amin(1)
    b1 = torch.where(before, columns[None, :] + 1, 0).amax(1)
    a1 = torch.where(count > 0, a1, 0)
    b1 = torch.where(count > 0, b1, 0)
    fits = bool((count == b1 - a1).all()) if rows else True
    return torch.stack([a1, b1, a2], dim=1), fits


def runs_bounds(runs: list[list[tuple[int, int]]], width: int) -> tuple[list[int], bool]:
    """`row_bounds` of the [rows, width] mask whose row i is ones on the column ranges runs[i] (in
    order, not overlapping, empty ones allowed), worked out from the ranges in plain Python: (a1, b1, a2
    for each row, flattened; whether every row fits). For a prefill whose mask is built from such
    ranges: row_bounds on the host's tensors took ~0.8 ms of a batch's prefill (session 26's trace)."""
    flat, fits = [], True
    for row in runs:
        merged: list[list[int]] = []
        for a, b in row:
            if a >= b:
                continue
            if merged and merged[-1][1] == a:
                merged[-1][1] = b
            else:
                merged.append([a, b])
        last = merged.pop() if merged and merged[-1][1] == width else None
        a2 = last[0] if last is not None else width
        fits = fits and len(merged) <= 1
        flat += [merged[0][0], merged[-1][1], a2] if merged else [0, 0, a2]
    return flat, fits


def bounds_mask(bounds: torch.Tensor, column: torch.Tensor, columns: int) -> torch.Tensor:
    """The [rows, columns] boolean mask `bounds` describe at the step writing `column`."""
    a1, b1, a2 = (bounds[:, i : i + 1] for i in range(3))
    at = torch.arange(columns, device=bounds.device)[None, :]
    return ((at >= a1) & (at < b1)) | ((at >= a2) & (at <= column.reshape(1, 1)))


def attend_torch(q, keys, values, bounds, column, scaling) -> torch.Tensor:
    """The reference: q [rows, heads, 1, dim], caches [rows, kv_heads, columns, dim]; [rows, 1, heads, dim]."""
    rows, heads, _, dim = q.shape
    kv_heads, columns = keys.shape[1], keys.shape[2]
    mask = bounds_mask(bounds, column, columns)[:, None, None, :]
    # As the kernel, reading nothing outside the bounds: what lies there (a stale NaN) does not count.
    outside = ~mask.view(rows, 1, columns, 1)
    keys, values = keys.masked_fill(outside, 0), values.masked_fill(outside, 0)
    grouped = q.reshape(rows, kv_heads, heads // kv_heads, dim)
    out = torch.nn.functional.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=scaling)
    return out.reshape(rows, 1, heads, dim)


def splits_for(rows: int, kv_heads: int, columns: int, device: torch.device) -> int:
    """Programs per row and key/value head: about `ENGINE_DECODE_WAVES` (1) per SM over the batch, no
    more than its blocks. One split needs no merge; more keep every SM busy when rows are few."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132
    wanted = math.ceil(_waves() * sms / max(rows * kv_heads, 1))
    return max(1, min(MAX_SPLITS, wanted, -(-columns // BLOCK_N)))


def _waves() -> float:
    """Programs per SM the splits aim at (a 1.1 B model's 4 key/value heads on an H100's 132 SMs: one split
    a row from 33 rows with 1, from 66 rows with 2). 1 since session 16: a 64-row 1.1 B step's graph
    replayed in 1.39 ms against 1.50 ms with 2 (no merge kernel; docs/benchmarks.md)."""
    return _waves_from(os.environ.get("ENGINE_DECODE_WAVES", "1"))


@functools.cache  # one warning per setting, not one per batch shape
def _waves_from(setting: str) -> float:
    try:
        waves = float(setting)
    except ValueError:
        waves = 0.0
    if not 0 < waves <= MAX_SPLITS:  # NaN included
        log.warning("ENGINE_DECODE_WAVES=%r is not a number in (0, %d]: 1 program per SM", setting, MAX_SPLITS)
        return 1.0
    return waves


def _like(model) -> torch.Tensor:
    weight = next(model.parameters())
    return torch.empty(0, dtype=weight.dtype, device=weight.device)


def kernel_runs(model) -> bool:
    """Whether this model's static decode steps attend by bounds through the Triton kernel (asked
    outside the batches too: by /stats)."""
    return _bounded_setting() and fused.installed(model) and fused._use_triton(_like(model))


def rope_attend_state(model) -> bool | None:
    """For /stats: whether the steps rotate, store and attend in one kernel (False: the warm-up's check
    or `ENGINE_ROPE_ATTEND=0` turned it off); None where the kernel does not run at all."""
    return rope_inside if kernel_runs(model) else None


def prepare(model) -> None:
    """Check `rope_attend` here (`verify_rope_attend`), then compile (or load from Triton's cache) the
    kernel this model's steps will run, both ways (one split and several): the server's warm-up calls
    it, so no batch waits for a compilation."""
    if not kernel_runs(model):
        return
    like = _like(model)
    heads, kv_heads, dim = attention_shape(model.config)
    if verify_rope_attend(heads, kv_heads, dim, like.dtype, like.device, folded.folded(model)):
        return  # its comparison ran both kernels the steps could run, one split and several

    def zeros(*shape, dtype=like.dtype):
        return torch.zeros(*shape, dtype=dtype, device=like.device)

    keys, values = zeros(1, kv_heads, 2 * BLOCK_N, dim), zeros(1, kv_heads, 2 * BLOCK_N, dim)
    bounds, column = zeros(1, 3, dtype=torch.long), torch.tensor([BLOCK_N], device=like.device)
    for splits in (1, 2):  # `attend`, the steps' kernel where rope_attend is off
        work = Workspace(1, heads, kv_heads, 2 * BLOCK_N, dim, like.device, splits=splits)
        attend(zeros(1, heads, 1, dim), keys, values, bounds, column, dim**-0.5, work)


def rope_attend_disagreement(heads: int, kv_heads: int, dim: int, dtype, device, scaled: bool = False) -> str | None:
    """Why `rope_attend` does not agree with the two kernels it replaces (`fused.rope_store`, then
    `attend`) at this model's shapes, or None where it does: the key and value written at the step's
    column bitwise equal, the outputs finite and within 0.02 + 2 % of the largest. One split a row
    and several; rows with a prefix, without, and a padding row with no key but its own. `scaled`
    (folded norms): also with the rows' factors taken by the kernel, against q, k and v scaled first
    (the factor's sum in another order: the key and value within 1 %)."""
    rows, columns, step = 4, 3 * BLOCK_N, 2 * BLOCK_N + 5
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)

    column = torch.tensor([step], device=device)
    bounds = torch.tensor([[3, 40, 60], [0, 0, 10], [20, 90, step], [0, 0, step]], device=device)
    qkv = randn(rows, 1, (heads + 2 * kv_heads) * dim)
    residual = randn(rows, 1, heads * dim) * 3

    def projections():  # fresh for each path: the rotary kernel rotates the queries in place
        return qkv.clone().split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)

    cos, sin = fused.rotary_tables(torch.arange(rows, device=device)[:, None] * 37 + 500, dim, dtype)
    keys = randn(rows, kv_heads, columns, dim)
    values = randn(rows, kv_heads, columns, dim)
    scale = dim**-0.5
    for splits, scale_of in [(1, None), (3, None)] + ([(1, (residual, 1e-5)), (3, (residual, 1e-5))] if scaled else []):
        work = Workspace(rows, heads, kv_heads, columns, dim, device, splits=splits)
        got_k, got_v = keys.clone(), values.clone()
        q, k, v = projections()
        got = rope_attend(q, k, v, cos, sin, got_k, got_v, bounds, column, scale, work, scale_of)
        if got is None:
            return None  # neither path is the kernel here: nothing to compare
        want_k, want_v = keys.clone(), values.clone()
        q, k, v = projections()
        if scale_of is not None:
            q, k, v = fused.scaled_rows(scale_of, q, k, v)
        rotated = fused.rope_store(q, k, v, cos, sin, dim, want_k, want_v, column)
        if rotated is None:  # the torch operations the decoder would run instead
            rotated = _rope_store_torch(q, k, v, cos, sin, want_k, want_v, column)
        want = attend(rotated, want_k, want_v, bounds, column, scale, work)
        if want is None:
            want = attend_torch(rotated, want_k, want_v, bounds, column, scale)
        what = f"{splits} split(s){', scaled' if scale_of is not None else ''}"
        if scale_of is None:
            stored = torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
        else:
            stored = all(torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2)
                         for a, b in ((got_k, want_k), (got_v, want_v)))  # fmt: skip
        if not stored:
            return f"{what}: the key or value written at the step's column differs"
        if not bool(torch.isfinite(got).all()):
            return f"{what}: outputs not finite"
        diff = float((got.float() - want.float()).abs().max())
        if diff > 0.02 + 0.02 * float(want.float().abs().max()):
            return f"{what}: outputs differ by up to {diff:.4g}"
    return None


def verify_rope_attend(heads: int, kv_heads: int, dim: int, dtype, device, scaled: bool = False) -> bool:
    """The server's warm-up, before any step: `rope_attend` runs only where it agrees with the kernels
    it replaces on this GPU, its compiler and this model's shapes (at the check's few rows and splits);
    otherwise the decoder keeps them (as `ENGINE_ROPE_ATTEND=0`), and the log says why."""
    global rope_inside
    if not rope_inside:
        return False
    try:
        why = rope_attend_disagreement(heads, kv_heads, dim, dtype, device, scaled)
    except Exception as exc:  # a kernel that fails to compile or run here
        why = f"{type(exc).__name__}: {exc}"
    if why is not None:
        rope_inside = False
        log.warning("decode steps rotate, store and attend in separate kernels: rope_attend %s", why)
    return rope_inside


class Workspace:
    """The splits' partial outputs and log-sum-exps, one set for every layer of a step (they run in turn)."""

    def __init__(self, rows: int, heads: int, kv_heads: int, columns: int, dim: int, device: torch.device,
                 splits: int | None = None):  # fmt: skip
        self.splits = splits or splits_for(rows, kv_heads, columns, device)
        self.part = torch.empty(rows, heads, self.splits, dim, dtype=torch.float32, device=device)
        self.lse = torch.empty(rows, heads, self.splits, dtype=torch.float32, device=device)
        # each row and key/value head's splits done so far; the last resets it (zeros between layers)
        self.count = torch.zeros(rows * kv_heads, dtype=torch.int32, device=device)


def _fits(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> bool:
    rows, heads, length, dim = q.shape
    kv_heads = keys.shape[1]
    return (
        length == 1 and heads % kv_heads == 0 and keys.shape == values.shape and keys.is_contiguous()
        and values.is_contiguous() and q.stride(-1) == 1 and q.dtype == keys.dtype == values.dtype
    )  # fmt: skip


def attend(q, keys, values, bounds, column, scaling, work: Workspace | None) -> torch.Tensor | None:
    """The step's attention output [rows, 1, heads, dim] for rotated queries q [rows, heads, 1, dim] and
    caches holding the step's key and value, or None where neither the kernel nor (with `everywhere`)
    the reference applies: the caller then attends through the mask."""
    if work is None or not _fits(q, keys, values):
        return None
    if not _kernel_runs(q, keys.shape[-1]):
        return attend_torch(q, keys, values, bounds, column, scaling) if everywhere else None
    return _launch(q, q.stride(0), q.stride(1), keys, values, bounds, column, scaling, work, None)


def _rope_store_torch(q, k, v, cos, sin, keys, values, column) -> torch.Tensor:
    """`fused.rope_store` in torch operations: the rotated queries [rows, heads, 1, dim]."""
    rows, dim = q.shape[0], keys.shape[-1]
    q, k = fused.rope_torch(q, k, cos, sin, dim)
    keys.index_copy_(2, column, k)
    values.index_copy_(2, column, v.view(rows, 1, -1, dim).transpose(1, 2))
    return q


def rope_attend_torch(q, k, v, cos, sin, keys, values, bounds, column, scaling, scale_of=None) -> torch.Tensor:
    """The reference of `rope_attend`: the torch rotary embedding and cache write, then attend_torch."""
    if scale_of is not None:
        q, k, v = fused.scaled_rows(scale_of, q, k, v)
    q = _rope_store_torch(q, k, v, cos, sin, keys, values, column)
    return attend_torch(q, keys, values, bounds, column, scaling)


def rope_attend(
    q, k, v, cos, sin, keys, values, bounds, column, scaling, work: Workspace | None, scale_of=None
) -> torch.Tensor | None:
    """A decode step's rotary embedding, cache write and attention in one kernel: q, k, v the
    projections' outputs [rows, 1, heads × dim] (column slices of a joined one too), cos and sin
    [rows, 1, dim]. The rotated key and the value go to the caches at `column` as `fused.rope_store`
    writes them, and the output [rows, 1, heads, dim] is `attend`'s. None where neither the kernel nor
    (with `everywhere`) the reference applies: the caller rotates, stores and attends apart.
    `scale_of` (residual [rows, 1, hidden], eps): q, k and v are a folded norm's products of the raw
    residual rows (folded.py), and each takes its row's RMS-norm factor, rounded, before anything else."""
    if work is None or not rope_inside:
        return None
    residual = scale_of[0] if scale_of is not None else None
    if residual is not None and not (residual.is_contiguous() and residual.dtype == q.dtype
                                     and residual.numel() == q.shape[0] * residual.shape[-1]):  # fmt: skip
        return None
    rows, length, width = q.shape
    kv_heads, dim = keys.shape[1], keys.shape[-1]
    heads = width // dim
    fits = (
        length == 1 and heads * dim == width and heads % kv_heads == 0 and keys.shape == values.shape
        and keys.shape[0] == rows and k.shape[-1] == v.shape[-1] == kv_heads * dim and keys.is_contiguous()
        and values.is_contiguous() and q.dtype == k.dtype == v.dtype == keys.dtype == values.dtype
    )  # fmt: skip
    if not fits:
        return None
    cos, sin = cos.expand(rows, 1, dim), sin.expand(rows, 1, dim)
    strides = [fused._token_stride(t) for t in (q, k, v)]
    if not (_kernel_runs(q, dim) and cos.dtype == q.dtype and None not in strides and cos.stride(-1) == 1
            and sin.stride() == cos.stride()):  # fmt: skip
        if not everywhere:
            return None
        return rope_attend_torch(q, k, v, cos, sin, keys, values, bounds, column, scaling, scale_of)
    rope = (k, v, cos, sin, strides[1], strides[2], cos.stride(0))
    return _launch(q, strides[0], dim, keys, values, bounds, column, scaling, work, rope, scale_of)


def _kernel_runs(q: torch.Tensor, dim: int) -> bool:
    return fused._use_triton(q) and dim in (32, 64, 128, 256)  # halves of 16 and up: the kernel's products


def _launch(q, q_row, q_head, keys, values, bounds, column, scaling, work: Workspace, rope,
            scale_of=None) -> torch.Tensor:  # fmt: skip
    rows, heads, kv_heads, dim = q.shape[0], work.part.shape[1], keys.shape[1], keys.shape[-1]
    group = heads // kv_heads
    splits = work.splits
    out = torch.empty(rows, 1, heads, dim, dtype=q.dtype, device=q.device)
    new_k, new_v, cos, sin, k_row, v_row, cos_row = rope or (q, q, q, q, 0, 0, 0)  # unread without ROPE
    residual, eps = scale_of if scale_of is not None else (q, 0.0)  # unread without SCALED
    res_n = residual.shape[-1] if scale_of is not None else 1

    merge = splits > 1 and merge_inside
    g_pad = max(16, triton.next_power_of_2(group))

    def launch():
        _attend_kernel[(rows, kv_heads, splits)](
            q, keys, values, bounds, column, out, work.part, work.lse,
            q_row, q_head, keys.stride(0), keys.stride(1), values.stride(0), values.stride(1),
            out.stride(0), out.stride(2), heads, float(scaling), splits,
            new_k, new_v, cos, sin, k_row, v_row, cos_row, residual, res_n, fused._fp32_reciprocal(res_n), eps,
            work.count, GROUP=group, G_PAD=g_pad, DIM=dim, BLOCK=BLOCK_N,
            ONE=splits == 1, ROPE=rope is not None, EXACT=not fused._INTERPRET, SCALED=scale_of is not None,
            BLOCK_H=triton.next_power_of_2(res_n), MERGE=merge, AHEAD=load_ahead, **LAUNCH_OPTIONS,
        )  # fmt: skip
        if splits > 1 and not merge:
            _merge_splits_kernel[(rows, kv_heads)](
                work.part, work.lse, out, out.stride(0), out.stride(2), heads, splits, GROUP=group, G_PAD=g_pad, DIM=dim,
            )  # fmt: skip
        return out

    return fused._run_kernel(launch, lambda: None)
