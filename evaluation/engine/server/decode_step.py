"""A static decode step's work outside its layers, in as few kernels as the same values allow.

Around its layers a step ran ~25 small kernels: Hugging Face's rotary module for the step's positions
(a cast, a product, a concatenation, cos, sin, two scalings, two casts), the mask as an additive bias
(three), and the greedy choice (fp32 logits, log-softmax, argmax, finiteness, the chosen logprob's
gather, five copies and adds that ready the next step). Each is a launch and ~2 µs of a 1.1 B step
of ~1.6 ms (session 13's profile, docs/benchmarks.md).

- `rotary_table`: the module's own cos and sin for every column's position, computed by the module
  itself once per buffer shape. Each element is one fp32 product (frequency × position) followed by
  elementwise cos, sin, scaling and cast, so a row of the table is bitwise the module's output for
  that position. Rope types whose frequencies follow the sequence length (dynamic, longrope) keep the
  module at every step.
- `greedy_tail`: one kernel after the head: the fp32 logits, the argmax (the first of equal values,
  as torch's), the chosen token's logprob (-log Σ exp(x - max): torch's log-softmax with the sum in
  another order, a few fp32 ulps apart), whether the row is finite, the next step's token and
  position, the column, and the next step's cos and sin from the table (`rotary_now`; the position
  clamped to the table, so a step queued past the buffer's end reads nothing out of bounds). A program
  for each block of a row (`greedy_shape`); the last of a row's to finish joins their figures.
- The mask's additive bias is built only by a layer that attends through the mask
  (static_decode._LazyBias): with bounded attention none does.

`ENGINE_LEAN_STEP=0` keeps the module, the bias and torch's operations (benchmarks compare).
Triton on CUDA (and under Triton's interpreter, for the tests); elsewhere torch's operations.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from evaluation.engine.server import fused

log = logging.getLogger(__name__)

lean = os.environ.get("ENGINE_LEAN_STEP", "1") != "0"


def _greedy_block(setting: str) -> int:
    """`ENGINE_GREEDY_BLOCK`: logits a greedy program reads (a row's part), a power of two from 1,024 to
    32,768 (else 4,096, with a warning)."""
    try:
        block = int(setting)
    except ValueError:
        block = 0
    if not 1024 <= block <= 32768 or block & (block - 1):
        log.warning("ENGINE_GREEDY_BLOCK=%r is not a power of two from 1024 to 32768: 4096", setting)
        return 4096
    return block


# A program a block of a row: 4,096 was the fastest on an H100 (greedy_shape).
GREEDY_BLOCK = _greedy_block(os.environ.get("ENGINE_GREEDY_BLOCK", "4096"))
# Frequencies fixed at the module's construction; "dynamic" and "longrope" change with the length.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")

if fused.triton is not None:
    import triton
    import triton.language as tl

    from evaluation.engine.server.fused import libdevice

    @triton.jit(do_not_specialize=["vocab", "in_row", "rows", "last", "parts"])
    def _greedy_kernel(
        logits_ptr, out_ptr, chosen_ptr, tokens_ptr, positions_ptr, column_ptr, table_ptr, now_ptr,
        part_ptr, count_ptr, vocab, in_row, rows, last, parts,
        WIDTH: tl.constexpr, ROTARY: tl.constexpr, BLOCK: tl.constexpr, EXACT: tl.constexpr, P_PAD: tl.constexpr,
    ):  # fmt: skip
        # A program for each block of a row (its part), read once: its sum from the same registers.
        row = tl.program_id(0).to(tl.int64)
        part = tl.program_id(1).to(tl.int64)
        idx = part * BLOCK + tl.arange(0, BLOCK)
        keep = idx < vocab
        x = tl.load(logits_ptr + row * in_row + idx, mask=keep, other=float("-inf")).to(tl.float32)
        tl.store(out_ptr + row * vocab + idx, x, mask=keep)
        bad = tl.sum((keep & ((x != x) | (tl.abs(x) == float("inf")))).to(tl.int32), 0)
        top = tl.max(x, 0)
        best = part * BLOCK + tl.argmax(x, 0).to(tl.int64)  # the first of equal values
        if EXACT:  # CUDA's expf and logf, as torch's log-softmax calls them
            total = tl.sum(libdevice.exp(x - top), 0)
        else:
            total = tl.sum(tl.exp(x - top), 0)
        final = row >= 0
        if P_PAD > 1:  # each part leaves its figures; the last to arrive joins them and ends the step
            mine = part_ptr + (row * P_PAD + part) * 4
            tl.store(mine, top.to(tl.float64))
            tl.store(mine + 1, best.to(tl.float64))
            tl.store(mine + 2, total.to(tl.float64))
            tl.store(mine + 3, bad.to(tl.float64))
            tl.debug_barrier()  # every thread's stores before the release below
            final = tl.atomic_add(count_ptr + row, 1, sem="acq_rel") == parts - 1
            p = tl.arange(0, P_PAD)
            theirs = part_ptr + (row * P_PAD + p) * 4
            there = p < parts
            tops = tl.load(theirs, mask=there, other=float("-inf"), volatile=True).to(tl.float32)
            top = tl.max(tops, 0)
            first = tl.min(tl.where(there & (tops == top), p, P_PAD), 0)  # the earliest part holding it
            best = tl.sum(tl.where(p == first, tl.load(theirs + 1, mask=there, other=0.0, volatile=True), 0.0), 0)
            best = best.to(tl.int64)
            sums = tl.load(theirs + 2, mask=there, other=0.0, volatile=True).to(tl.float32)
            if EXACT:
                scaled = sums * libdevice.exp(tops - top)
            else:
                scaled = sums * tl.exp(tops - top)
            # A part of -inf alone has no sum (its own is NaN) and adds nothing.
            total = tl.sum(tl.where(tops == float("-inf"), 0.0, scaled), 0)
            bad = tl.sum(tl.load(theirs + 3, mask=there, other=0.0, volatile=True), 0).to(tl.int32)
            tl.store(count_ptr + row, 0, mask=final)  # ready for the next step's kernel
        if EXACT:
            logprob = -libdevice.log(total)
        else:
            logprob = -tl.log(total)
        tl.store(chosen_ptr + row, best.to(tl.float64), mask=final)
        tl.store(chosen_ptr + rows + row, logprob.to(tl.float64), mask=final)
        tl.store(chosen_ptr + 2 * rows + row, (bad == 0).to(tl.float64), mask=final)
        tl.store(tokens_ptr + row, best, mask=final)
        position = tl.load(positions_ptr + row) + 1
        tl.store(positions_ptr + row, position, mask=final)
        if ROTARY:
            d = tl.arange(0, WIDTH)
            at_row = tl.minimum(position, last)
            tl.store(now_ptr + row * WIDTH + d, tl.load(table_ptr + at_row * WIDTH + d), mask=final & (d >= 0))
        if row == 0:
            tl.store(column_ptr, tl.load(column_ptr) + 1, mask=final)


def greedy_choice(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-softmax, argmax, all finite) of each row of fp32 logits: how every greedy token is chosen,
    by the host (BatchGenerator._choose) and by `greedy_tail_torch`."""
    return torch.log_softmax(logits, dim=-1), logits.argmax(dim=-1), torch.isfinite(logits).all(dim=-1)


def table_applies(rotary: Any) -> bool:
    """Whether steps read `rotary_table` instead of calling this rotary module."""
    return lean and getattr(rotary, "rope_type", None) in STATIC_ROPE_TYPES


def rotary_table(rotary: Any, dtype: torch.dtype, device: torch.device, positions: int) -> torch.Tensor | None:
    """[positions, 2 × dim]: the module's cos then sin for positions 0 … positions - 1, or None where
    the step keeps calling the module (a rope type that follows the length, or `ENGINE_LEAN_STEP=0`)."""
    if not table_applies(rotary):
        return None
    # Shaped as a step's positions ([rows, 1]): one row per position.
    at = torch.arange(positions, device=device).view(positions, 1)
    cos, sin = rotary(torch.empty(0, dtype=dtype, device=device), at)
    return torch.cat([cos[:, 0], sin[:, 0]], dim=-1).contiguous()


def rotary_rows(table: torch.Tensor, positions: torch.Tensor, out: torch.Tensor) -> None:
    """out [rows, 2 × dim] ← the table's rows at `positions` (clamped to the table)."""
    out.copy_(table.index_select(0, positions.clamp(max=table.shape[0] - 1)))


def cos_sin(now: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [rows, 1, dim] views of a [rows, 2 × dim] `rotary_now`, as the module returns them."""
    dim = now.shape[1] // 2
    return now[:, None, :dim], now[:, None, dim:]


def kernel_applies(head: torch.Tensor, chosen: torch.Tensor, table, now) -> bool:
    """Whether `greedy_tail` runs its kernel for these buffers (else torch's operations)."""
    rotary_ok = table is None or (not table.shape[1] & (table.shape[1] - 1) and now.is_contiguous())
    return lean and fused._use_triton(head) and head.stride(1) == 1 and chosen.is_contiguous() and rotary_ok


def greedy_shape(vocab: int) -> tuple[int, int, int]:
    """The greedy kernel's block, warps and parts: a program for each block of GREEDY_BLOCK logits of a
    row, 16 a thread at 4,096 with 8 warps (up to 32 warps). At a 1.1 B step's 50 rows × 32,000 logits
    on an H100, 7.7 µs in 8 parts of 4,096, 7.9 in 4 of 8,192, 8.8 in 16 of 2,048; a program reading
    its row alone took 16.0 µs in blocks of 4,096 (twice, one after another), 15.0 in one of 32,768
    (docs/benchmarks.md, session 27)."""
    block = min(GREEDY_BLOCK, triton.next_power_of_2(vocab))
    return block, max(8, min(32, block // 512)), -(-vocab // block)


def greedy_parts(rows: int, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Where the parts of each row leave their figures and count themselves (`greedy_tail`), for a
    step's buffers: zeros, made outside any graph's capture (the last part sets its count back to 0);
    None where a row is one part or the kernel does not run."""
    if not lean or fused.triton is None or (device.type != "cuda" and not fused._INTERPRET):
        return None
    parts = greedy_shape(vocab)[2]
    if parts == 1:
        return None
    return (torch.zeros(_figures(rows, parts), dtype=torch.float64, device=device),
            torch.zeros(rows, dtype=torch.int32, device=device))  # fmt: skip


def _figures(rows: int, parts: int) -> int:
    """The float64s the parts of `rows` rows leave their figures in: four a part, the parts of a row
    padded to a power of two (the kernel's P_PAD)."""
    return rows * triton.next_power_of_2(parts) * 4


def _parts_fit(parts, rows: int, vocab: int) -> bool:
    """Whether `parts` (`greedy_parts`' buffers) hold these rows' parts; a row of one part needs none."""
    count = greedy_shape(vocab)[2]
    return count == 1 or (parts is not None and parts[0].numel() == _figures(rows, count) and parts[1].numel() == rows)


def greedy_tail(head: torch.Tensor, chosen, tokens, positions, column, table, now, parts=None) -> torch.Tensor:
    """A step's end, from the head's logits [rows, vocab] (see the module's docstring): returns the
    fp32 logits; `chosen` [3, rows] gets each row's token, its logprob and whether the row is finite,
    `tokens` the tokens, `positions` and `column` one more, `now` the next step's cos and sin (with a
    table). One kernel where `kernel_applies` (`parts`: `greedy_parts`' buffers, where a row has
    several), else `greedy_tail_torch`."""
    rows, vocab = head.shape
    if not kernel_applies(head, chosen, table, now) or not _parts_fit(parts, rows, vocab):
        return greedy_tail_torch(head, chosen, tokens, positions, column, table, now)
    out = torch.empty(rows, vocab, dtype=torch.float32, device=head.device)
    rotary = table is not None
    block, warps, count = greedy_shape(vocab)
    figures, counts = parts if count > 1 else (chosen, column)  # unread with one part

    def launch():
        _greedy_kernel[(rows, count)](
            head, out, chosen, tokens, positions, column, table if rotary else out, now if rotary else out,
            figures, counts, vocab, head.stride(0), rows, table.shape[0] - 1 if rotary else 0, count,
            WIDTH=table.shape[1] if rotary else 1, ROTARY=rotary, BLOCK=block, EXACT=not fused._INTERPRET,
            P_PAD=triton.next_power_of_2(count), num_warps=warps,
        )  # fmt: skip
        return out

    return fused._run_kernel(launch, lambda: greedy_tail_torch(head, chosen, tokens, positions, column, table, now))


def write_choice(logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """chosen [3, rows] ← each row's greedy token, its logprob and whether its fp32 logits are all finite
    (as `greedy_tail` lays them out for the host); returns the tokens."""
    logprobs, choice, finite = greedy_choice(logits)
    chosen[0].copy_(choice)
    chosen[1].copy_(logprobs.gather(1, choice[:, None])[:, 0])
    chosen[2].copy_(finite)
    return choice


def greedy_tail_torch(head: torch.Tensor, chosen, tokens, positions, column, table, now) -> torch.Tensor:
    """`greedy_tail` in torch's operations (the CPU, fp32, `ENGINE_LEAN_STEP=0`, the kernel's reference)."""
    logits = head.float()
    tokens.copy_(write_choice(logits, chosen))
    positions.add_(1)
    column.add_(1)
    if table is not None:
        rotary_rows(table, positions, now)
    return logits
