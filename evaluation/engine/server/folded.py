"""Decode steps without norm kernels: each RMSNorm's weight folded into the products it feeds.

A 1.1 B decode step at ~50 rows is ~8 kernels a layer, and between kernels the memory idles: on an
H100 the steps reach ~51 % of the copy rate, on an H200 ~41 % (docs/benchmarks.md, sessions 22-23;
no product kernel beat cuBLAS's, and L2 prefetches made steps slower). Two of the eight are the
norms, each a residual sum and an RMSNorm. Both can go:

- A Llama norm is weight ⊙ (x · s), s = 1 / sqrt(mean(x²) + eps) a number per row, and what reads it
  is a product W · (weight ⊙ x · s) = s · ((W ⊙ weight) · x): the weight folds into the product's
  columns once, at load (`fold`: a copy of the joined q/k/v weight takes the input norm's, a copy of
  the joined gate/up weight the post-attention norm's, each rounded once to the weights' dtype).
- In a decode step those products read the residual rows themselves, and the kernel after each (the
  step's attention, `decode_attention.rope_attend`; SiLU × up, `fused.silu_mul`) computes its row's s
  from the residual row (a few KB, from L2) and scales its inputs, rounded as a product's output is,
  before anything else.
- The output and down products add into the residual in place (cuBLAS with beta = 1), where the
  norms' kernels made the sums.

Six kernels a layer instead of eight. The values are the same function in another rounding (the
weight's product with the norm's rounded once, the residual sums rounded once with the product's), so
only decode steps run folded: the model's own weights and every other forward (multiple choice, the
prefills) stay as they were, bitwise. The copies cost memory (with the layout below 1.9 GB at 1.1 B,
13 GB at 6.7 B), so a model folds only where they take at most a tenth of what the allocator may hold
(`MAX_SHARE`): a 1.1 B model under the 4090 track's 24 GB does, a 6.7 B one does not (its steps are
at ~84 % of the copy rate already). The server folds before it sizes its batch limits, which then leave the copies room.
Half precision only (fp32 runs keep the steps whose values match stock HELM's); joined projections
and no biases (a bias would take the scale). `ENGINE_FOLD_NORMS=0` keeps the norms, `=1` folds on any
device and dtype, whatever the memory (the tests).

The steps' weights are stored transposed, [in, out] contiguous (`ENGINE_FOLD_TRANSPOSED`, on by
default): cuBLAS then runs its kernels for a row-major weight, which at a step's 64 rows are faster
than those for the model's [out, in] layout, the down product's most (on an H100 11.3 µs against 13.2,
a layer of the folded chain 59.0 µs against 61.5; `benchmarks/product_layouts.py`, docs/benchmarks.md
session 28). The folded q/k/v and gate/up copies are made that way at no cost (`F.linear` reads a
transposed view without copying); the output and down products get copies of their own, 0.7 GB more
at 1.1 B, counted in the tenth above (a model whose copies fit the tenth only without them folds in
the model's layout).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from evaluation.engine.server import fused, lt_matmul
from evaluation.engine.server.switches import switch

# The most of what the allocator may hold that the folded copies may take.
MAX_SHARE = 0.1


def _setting() -> str:
    return os.environ.get("ENGINE_FOLD_NORMS", "auto")


def _transposed() -> bool:
    return switch("ENGINE_FOLD_TRANSPOSED", default="1") is not False


def possible(model: Any, budget_bytes: int | None = None) -> bool:
    """Whether `fold` would fold this model's norms (its layers installed fused; see the docstring):
    `budget_bytes`, the track's budget (None: the whole card)."""
    return _plan(model, budget_bytes) is not None


def _plan(model: Any, budget_bytes: int | None) -> bool | None:
    """None: no fold; else whether the steps' weights are stored transposed, which takes the output and
    down copies too: where those do not fit the tenth and the folded copies alone do, the model's layout."""
    setting = _setting()
    if setting == "0" or not getattr(model, "_engine_fused", False):
        return None
    param = next(model.parameters(), None)
    if param is None or not all(_layer_ok(layer) for layer in model.model.layers):
        return None
    if setting == "1":
        return _transposed()
    if not (param.is_cuda and param.dtype in (torch.float16, torch.bfloat16)):
        return None
    from evaluation.engine.loading import allocator_cap_bytes

    limit = (
        allocator_cap_bytes(budget_bytes)
        if budget_bytes
        else torch.cuda.get_device_properties(param.device).total_memory
    )
    room = MAX_SHARE * limit
    if _transposed() and extra_bytes(model, True) <= room:
        return True
    return False if extra_bytes(model, False) <= room else None


def extra_bytes(model: Any, transposed: bool | None = None) -> int:
    """The folded copies' bytes: every layer's joined q/k/v and gate/up weights, and with the
    transposed layout (by default `ENGINE_FOLD_TRANSPOSED`'s) its output and down weights."""
    copied = [
        j.weight for layer in model.model.layers for j in (layer.self_attn._engine_joined, layer.mlp._engine_joined)
    ]
    transposed = _transposed() if transposed is None else transposed
    if transposed:
        copied += [w for layer in model.model.layers for w in _adding_weights(layer)]
    return sum(w.numel() * w.element_size() for w in copied)


def _adding_weights(layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights of the products that add into the residual: output and down."""
    return layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight


def _layer_ok(layer: Any) -> bool:
    attn, mlp = layer.self_attn, layer.mlp
    qkv, gate_up = getattr(attn, "_engine_joined", None), getattr(mlp, "_engine_joined", None)
    if qkv is None or gate_up is None or qkv.bias is not None or gate_up.bias is not None:
        return False
    if attn.o_proj.bias is not None or mlp.down_proj.bias is not None or type(attn.o_proj) is not torch.nn.Linear:
        return False
    norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
    return all(w.dtype == qkv.weight.dtype and w.shape == (qkv.weight.shape[1],) for w in norms)


def fold(model: Any, budget_bytes: int | None = None) -> bool:
    """Give each layer's joined q/k/v and gate/up products a copy with its norm's weight folded in (see
    the docstring); returns whether the model's decode steps run folded."""
    decided = getattr(model, "_engine_folded", None)
    if decided is not None:  # the first call decides: the server's, under the track's budget
        return decided
    transposed = _plan(model, budget_bytes)
    if transposed is None:
        model._engine_folded = False
        return False
    with torch.no_grad():
        for layer in model.model.layers:
            for norm, joined in ((layer.input_layernorm, layer.self_attn._engine_joined),
                                 (layer.post_attention_layernorm, layer.mlp._engine_joined)):  # fmt: skip
                w = joined.weight  # in fp32, then one rounding to the weights' dtype
                product = (w.float() * norm.weight.float()[None, :]).to(w.dtype)
                joined.folded = product.t().contiguous().t() if transposed else product
            # The output and down products' right operand, [in, out]: a copy stored so, or a view.
            layer._engine_adding = tuple(w.t().contiguous() if transposed else w.t() for w in _adding_weights(layer))
    model._engine_folded = True
    return True


def folded(model: Any) -> bool:
    """Whether `fold` folded this model's norms."""
    return bool(getattr(model, "_engine_folded", False))


def step_parts(layer: Any, hidden: torch.Tensor, past: Any, mask, position_ids, position_embeddings) -> torch.Tensor:
    """One folded layer of a static decode step (one token a row): the residual rows [rows, 1, hidden]
    are updated in place and returned (hidden must be fully summed: the step's embeddings, or the layer
    before's output)."""
    attn, mlp = layer.self_attn, layer.mlp
    rows = hidden.shape[0]
    flat = hidden.view(rows, -1)
    q, k, v = _project(attn._engine_joined, hidden)
    cos, sin = position_embeddings
    scale_of = (hidden, fused._eps(layer.input_layernorm))
    out = past.rope_attend(q, k, v, cos, sin, attn.layer_idx, attn.scaling, scale_of=scale_of)
    if out is None:  # the kernel does not apply: scale here, then the fused layer's own attention path
        q, k, v = fused.scaled_rows(scale_of, q, k, v)
        out = fused._attention(attn, q, k, v, cos, sin, mask, position_ids, past, past.column)
    o_weight, down_weight = layer._engine_adding
    lt_matmul.mm(out.reshape(rows, -1), o_weight, flat, accumulate=True)
    gate, up = _project(mlp._engine_joined, hidden)
    act = fused.silu_mul(gate, up, scale_of=(hidden, fused._eps(layer.post_attention_layernorm)))
    lt_matmul.mm(act.reshape(rows, -1), down_weight, flat, accumulate=True)
    return hidden


def _project(joined: Any, hidden: torch.Tensor) -> list[torch.Tensor]:
    """A joined projection of the residual rows [rows, 1, hidden] by its folded copy: through the
    algorithm `lt_matmul.tune` chose where it chose one, else as the joined module computes it."""
    if not lt_matmul.any_chosen():
        return joined(hidden, joined.folded)
    rows = hidden.shape[0]
    out = lt_matmul.mm(hidden.view(rows, -1), joined.folded.t())
    return list(out.view(rows, 1, -1).split(joined.sizes, dim=-1))


def product_groups(model: Any) -> dict[str, tuple[list[torch.Tensor], bool]]:
    """A folded model's step products for `lt_matmul.tune`: each one's weights [in, out] in every layer
    and whether it adds into the residual; none where the steps' weights are in the model's layout."""
    if not folded(model):
        return {}
    layers = model.model.layers
    groups = {
        "qkv": ([layer.self_attn._engine_joined.folded.t() for layer in layers], False),
        "o": ([layer._engine_adding[0] for layer in layers], True),
        "gate_up": ([layer.mlp._engine_joined.folded.t() for layer in layers], False),
        "down": ([layer._engine_adding[1] for layer in layers], True),
    }
    if not all(w.is_contiguous() for weights, _ in groups.values() for w in weights):
        return {}
    return groups
