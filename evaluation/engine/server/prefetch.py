"""A decode step's small kernels ask L2 for weights that a later product of the step reads.

At ~50 rows a 1.1 B step is ~200 kernels of a few microseconds: four products a layer read the
weights, and between them the norms, the attention and SiLU × up read little, each launch ramps up
and drains, and the card's memory idles (the steps reached 41 % of the copy rate on an H200 in
session 22, 51 % on an H100). Here those small kernels (ours, not cuBLAS's) also issue
`cp.async.bulk.prefetch.L2` for a weight the step reads soon after, so its bytes stream from memory
while they run, and the product that reads it finds them in L2. Nothing computed changes: a prefetch
reads into the cache and writes nothing, so a step's values are bitwise the same with it or without.

Which kernel asks for which weight (`SLOTS`, by `plan`): the input norm for the layer's output
projection, the post-attention norm for its down projection, SiLU × up for the next layer's
query/key/value projection; L2 (50 MB on an H100 or H200) holds one of those at a time beside the
stream of the gate/up product. `ENGINE_L2_PREFETCH`: 0 off, 1 bulk prefetches, `last` the same
with an evict-last policy (the lines outlast the products' streams); off by default until measured.
Only decode steps on sm90 ask (`cp.async.bulk.prefetch` is Hopper's): prefills read their weights
once per chunk of thousands of tokens, and Triton's interpreter (the CPU tests) has no PTX.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

try:  # as fused.py: Triton ships with CUDA builds of torch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

MODES = {"0": 0, "1": 1, "last": 2}
# Kernel → (which layer, which weight): the weight a later product of the same step reads.
SLOTS = {
    "norm1": ("this", "o_proj"),
    "norm2": ("this", "down_proj"),
    "silu": ("next", "qkv"),
}

if triton is not None:

    @triton.jit
    def ask(pf_ptr, pf_bytes, programs, program, MODE: tl.constexpr, LANES: tl.constexpr):
        """This program's share of [pf_ptr, pf_ptr + pf_bytes) asked of L2, a slice for each of its
        LANES threads (32 × the launch's warps: one element a thread, none asking twice; whole
        128-byte lines; empty slices ask nothing)."""
        lanes = tl.arange(0, LANES)
        share = tl.cdiv(tl.cdiv(pf_bytes, programs * LANES), 128) * 128
        start = (program * LANES + lanes).to(tl.int64) * share
        size = tl.minimum(tl.maximum(pf_bytes - start, 0), share).to(tl.int32)
        base = pf_ptr.to(tl.pointer_type(tl.int8)) + start
        if MODE == 1:
            tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.gt.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
                "=r,l,r", [base, size], dtype=tl.int32, is_pure=False, pack=1,
            )  # fmt: skip
        elif MODE == 2:
            tl.inline_asm_elementwise(
                "{ .reg .pred p; .reg .b64 pol; setp.gt.s32 p, $2, 0; "
                "createpolicy.fractional.L2::evict_last.b64 pol, 1.0; "
                "@p cp.async.bulk.prefetch.L2.global.L2::cache_hint [$1], $2, pol; mov.u32 $0, 0; }",
                "=r,l,r", [base, size], dtype=tl.int32, is_pure=False, pack=1,
            )  # fmt: skip


def mode() -> int:
    """The prefetch kind the kernels compile in (0: none)."""
    return MODES.get(os.environ.get("ENGINE_L2_PREFETCH", "0"), 0)


def possible(like: torch.Tensor) -> bool:
    """Whether kernels on `like`'s device can ask: Triton on an sm90 card or newer, not interpreted."""
    if triton is None or os.environ.get("TRITON_INTERPRET") == "1" or not like.is_cuda:
        return False
    return _capability(like.device.index if like.device.index is not None else torch.cuda.current_device()) >= (9, 0)


@functools.cache  # asked at every launch of a kernel that prefetches
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _weight(layer: Any, name: str) -> torch.Tensor | None:
    if name == "qkv":
        joined = getattr(layer.self_attn, "_engine_joined", None)
        return joined.weight if joined is not None else layer.self_attn.q_proj.weight
    module = layer.self_attn.o_proj if name == "o_proj" else getattr(layer.mlp, name)
    return module.weight


def plan(model: Any) -> None:
    """Each fused layer's `_engine_prefetch`: kernel → the weight it asks for (see SLOTS); none where
    prefetching is off or impossible here."""
    layers = list(model.model.layers)
    on = mode() != 0 and bool(layers) and possible(next(model.parameters()))
    for i, layer in enumerate(layers):
        asks = {}
        for slot, (which, name) in SLOTS.items():
            j = i + 1 if which == "next" else i
            if on and j < len(layers):
                weight = _weight(layers[j], name)
                if weight is not None and weight.is_contiguous():
                    asks[slot] = weight
        layer._engine_prefetch = asks


def args(target: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(pointer, bytes, MODE) for a kernel's prefetch parameters: `like`, 0 and 0 where it asks nothing."""
    kind = mode() if target is not None else 0
    if not kind or not possible(target):
        return like, 0, 0
    return target, target.numel() * target.element_size(), kind
