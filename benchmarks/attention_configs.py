"""How fast is a decode step's attention kernel at a step's shape, launched each way?

In a folded 1.1 B decode step the attention kernel (`decode_attention.rope_attend`: it scales the
row, rotates, stores the step's key and value and attends) took 8.2 µs a layer on an H100, 15 % of a
layer (docs/benchmarks.md, session 28's trace), while the keys and values it reads, ~190 a row
midway through a generation batch (1 KB a column at 1.1 B), are ~10 MB a layer at 64 rows: ~3.5 µs at
the copy rate. Each
program waits on a chain of loads (its bounds, then block after block of keys and values), so how it
is launched may matter more than what it reads.

Here: 64 rows (50 with a prefix of 85 tokens, a suffix of 20-60 and 64 new tokens, as the static
decoder lays them out; 14 padding rows attending to their own steps), 22 layers' caches, so that L2
holds none, and one `rope_attend` a layer captured as one CUDA graph, for each launch: the key block
(`BLOCK_N`), Triton's num_warps and num_stages, and the splits a row. Printed: µs a layer, and the
largest difference from the engine's launch's output (the same sums in another order).

    bash benchmarks/gpu_env.sh python3 -m benchmarks.attention_configs

Session 29, one H100: the engine's launch 9.39 µs a layer (9.51 before its loads were issued first);
of 49 launches the best, 9.35 µs, within 0.5 % of it; 32- or 256-column blocks, 8 warps and two splits
slower (docs/benchmarks.md). `--ablate` times the engine's launch on parts of its work: session 30,
an H200, 8.76 µs a layer; 8.57 without the row's RMS factor; 2.62 with no cached key to read; 0.86 for
an empty kernel on the same grid: reading the keys and values is most of it. Several splits a row,
merged in the kernel since session 30, stay slower than one at 64 rows (12.9-15.7 µs on an H100).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.engine.server import decode_attention, fused  # noqa: E402

ROWS, FILLED, HEADS, KV_HEADS, DIM, HIDDEN, LAYERS = 64, 50, 32, 4, 64, 2048, 22
COLUMNS = 384
NEW = COLUMNS // 6  # the new tokens' columns before the step's (`batch_layout`)


def batch_layout(rows: int, filled: int, columns: int, dim: int, gen, device, dtype) -> dict:
    """A generation batch midway, as the static decoder lays it out in `columns` columns: the first
    `filled` rows with a prefix of up to 85 columns ending at a quarter of them, then a suffix of 20-60
    (at most a sixth) ending where the new tokens start; the rest padding rows (StaticDecoder.pad_rows)
    attending to their own steps' columns; the step a sixth of the columns later. Its bounds, the
    step's column and its rows' rotary tables."""
    prefix_area, suffix_area, new = columns // 4, columns // 6, columns // 6
    start = prefix_area + suffix_area  # the first rows' prompts end here; new tokens follow
    bounds = torch.zeros(rows, 3, dtype=torch.long)
    bounds[:filled, 0], bounds[:filled, 1] = prefix_area - min(85, prefix_area), prefix_area
    suffix = torch.randint(min(20, suffix_area), min(60, suffix_area) + 1, (filled,), generator=gen)
    bounds[:filled, 2] = start - suffix
    bounds[filled:, 2] = start
    column = start + new
    cos, sin = fused.rotary_tables(torch.arange(rows, device=device)[:, None] + column, dim, dtype)
    return dict(bounds=bounds.to(device), column=torch.tensor([column], device=device), cos=cos, sin=sin)


def step_inputs(device, dtype=torch.bfloat16, layers: int = LAYERS, seed: int = 0) -> dict:
    """A step's inputs as a 1.1 B generation batch has them midway (`batch_layout`)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    layout = batch_layout(ROWS, FILLED, COLUMNS, DIM, gen, device, dtype)
    qkv = randn(ROWS, 1, (HEADS + 2 * KV_HEADS) * DIM)
    q, k, v = qkv.split([HEADS * DIM, KV_HEADS * DIM, KV_HEADS * DIM], dim=-1)
    return dict(
        layout, q=q, k=k, v=v, residual=randn(ROWS, 1, HIDDEN) * 3,
        caches=[(randn(ROWS, KV_HEADS, COLUMNS, DIM), randn(ROWS, KV_HEADS, COLUMNS, DIM)) for _ in range(layers)],
    )  # fmt: skip


def engine_config() -> dict:
    """The engine's launch: its key block (64 unless set), Triton's defaults, one split (at 64 rows)."""
    return dict(block=decode_attention.BLOCK_N, warps=None, stages=None, splits=1)


def configs(blocks, warps, stages, splits) -> list[dict]:
    """The engine's launch first, then every combination."""
    engine = engine_config()
    rest = [
        dict(block=b, warps=w, stages=s, splits=n) for b, w, s, n in itertools.product(blocks, warps, stages, splits)
    ]
    return [engine] + [c for c in rest if c != engine]


def ablations(inputs: dict) -> dict[str, tuple[dict, bool]]:
    """The engine's launch on parts of its work, to say where its time goes: name -> (inputs, whether
    the rows take their RMS factor from the residual as a folded step's do). "no keys": every row's
    bounds empty, so that no program reads a cached key (the kernel's fixed cost)."""
    empty = dict(inputs, bounds=torch.zeros_like(inputs["bounds"]))
    empty["bounds"][:, 2] = inputs["column"]  # own columns from the step's: none in the cache
    return {"engine": (inputs, True), "unscaled": (inputs, False), "no keys": (empty, True),
            "no keys, unscaled": (empty, False)}  # fmt: skip


def run_config(inputs: dict, config: dict, device, scaled: bool = True) -> callable:
    """A call of one `rope_attend` a layer under `config`; it returns the last layer's output. `scaled`:
    the rows take their RMS factor from the residual (a folded step's attention)."""
    work = decode_attention.Workspace(ROWS, HEADS, KV_HEADS, COLUMNS, DIM, device, splits=config["splits"])
    options = {k: v for k, v in (("num_warps", config["warps"]), ("num_stages", config["stages"])) if v is not None}
    i = inputs

    def run():
        saved = decode_attention.BLOCK_N, dict(decode_attention.LAUNCH_OPTIONS)
        decode_attention.BLOCK_N = config["block"]
        decode_attention.LAUNCH_OPTIONS.clear()
        decode_attention.LAUNCH_OPTIONS.update(options)
        try:
            out = None
            for keys, values in i["caches"]:
                out = decode_attention.rope_attend(
                    i["q"], i["k"], i["v"], i["cos"], i["sin"], keys, values, i["bounds"], i["column"],
                    DIM**-0.5, work, (i["residual"], 1e-5) if scaled else None,
                )  # fmt: skip
            return out
        finally:
            decode_attention.BLOCK_N = saved[0]
            decode_attention.LAUNCH_OPTIONS.clear()
            decode_attention.LAUNCH_OPTIONS.update(saved[1])

    return run


def _empty_kernels(device) -> callable:
    """LAYERS launches of a Triton kernel that stores one number, on the attention's grid."""
    import triton
    import triton.language as tl

    @triton.jit
    def _nothing(out_ptr):
        if tl.program_id(0) + tl.program_id(1) == 0:
            tl.store(out_ptr, 1.0)

    out = torch.zeros(1, device=device)

    def run():
        for _ in range(LAYERS):
            _nothing[(ROWS, KV_HEADS)](out)
        return out

    return run


def main(argv: list[str] | None = None) -> int:
    from benchmarks.fused_kernels import write_report
    from evaluation.engine.server.cuda_graphs import replayed_ms

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--warps", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--splits", type=int, nargs="+", default=[1, 2])
    p.add_argument("--replays", type=int, default=50)
    p.add_argument("--ablate", action="store_true", help="the engine's launch on parts of its work only")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    device = torch.device("cuda")
    inputs = step_inputs(device)
    if args.ablate:
        engine = engine_config()
        rows = []
        for name, (variant, scaled) in ablations(inputs).items():
            ms, _ = replayed_ms(run_config(variant, engine, device, scaled), args.replays)
            rows.append(dict(variant=name, us_layer=ms * 1e3 / LAYERS))
            print(json.dumps(rows[-1]), flush=True)
        ms, _ = replayed_ms(_empty_kernels(device), args.replays)  # the floor: a launch of the same grid
        rows.append(dict(variant="a kernel that does nothing", us_layer=ms * 1e3 / LAYERS))
        print(json.dumps(rows[-1]), flush=True)
        write_report(args.out, ablations=rows)
        return 0
    results, reference = [], None
    for config in configs(args.blocks, args.warps, args.stages, args.splits):
        fused._triton_failed = False
        try:
            ms, out = replayed_ms(run_config(inputs, config, device), args.replays)
            failed = "the kernel did not run" if out is None or fused._triton_failed else None
        except Exception as exc:  # a launch Triton cannot compile
            ms, out, failed = float("nan"), None, f"{type(exc).__name__}: {exc}"[:200]
        row = dict(config, us_layer=ms * 1e3 / LAYERS)
        if failed:
            row["failed"] = failed
        else:
            reference = out.clone() if reference is None else reference
            row["max_abs_diff"] = float((out.float() - reference.float()).abs().max())
        results.append(row)
        print(json.dumps(row), flush=True)
    fused._triton_failed = False
    best = min((r for r in results if "failed" not in r), key=lambda r: r["us_layer"], default=None)
    print(f"engine's launch {results[0]['us_layer']:.2f} µs a layer; best {best}", flush=True)
    write_report(args.out, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
