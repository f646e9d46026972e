"""Which weight layout and BLAS library make a decode step's products fastest at a step's few rows?

A folded 1.1 B decode step (folded.py) is four products a layer by cuBLAS at ~50 rows, and on an H200
it reads the weights at only ~44 % of the copy rate (docs/benchmarks.md, session 26): at so few rows
a product's time is its kernel's ramp, its loads in flight and its tail, all chosen by cuBLAS's
heuristics for the shape it is asked. The same product can be asked three ways, each a different
kernel:

- `tn`, as the engine asks it: `F.linear(x, W)` with W [out, in] (and `res.addmm_(h, W.t())`);
- `nn`: the weight stored transposed, [in, out] contiguous: `x @ Wt` (`res.addmm_(h, Wt)`);
- `wx`: the output transposed, `W @ xT` with xT [in, rows] (products alone: the step's other kernels
  read rows);

each through cuBLAS or cuBLASLt (`torch.backends.cuda.preferred_blas_library`). Printed: for each
product shape a chain of `layers` products, each over its own copy of the weight (so L2 holds none),
replayed as one CUDA graph: µs a product and its weight's bytes over that time as a share of the copy
rate; then the whole folded layer chain of `benchmarks/l2_prefetch.py` (attention and SiLU × up
stand-ins included) for the `tn` and `nn` layouts, µs a layer.

    bash benchmarks/gpu_env.sh python3 -m benchmarks.product_layouts --size 1b --rows 50 64
    bash benchmarks/gpu_env.sh python3 -m benchmarks.product_layouts --size 1b --rows 256 2048 --no-chain

(the second: whether a prefill's products, at its replays' rows, would gain as well; not yet run).

Session 28, one H100 (docs/benchmarks.md): at 64 rows, the static decoder's bucket for 50, the down
product took 11.3 µs stored [in, out] against 13.2 in the model's layout (there cuBLAS splits its inner
dimension and adds the parts in a second kernel), the others 0.1-1.4 µs less; the folded chain 59.0 µs
a layer against 61.5. The engine's folded steps read their weights so since (`folded.py`,
`ENGINE_FOLD_TRANSPOSED`). `wx` was slower at 50 rows, cuBLASLt no better than cuBLAS. The run takes
~5 minutes (60 chains and their captures).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fused_kernels import write_report  # noqa: E402
from benchmarks.gpu_ceilings import copy_rate  # noqa: E402
from benchmarks.l2_prefetch import SIZES, Chain, head_dim  # noqa: E402
from evaluation.engine.server.cuda_graphs import replayed_ms  # noqa: E402

LAYOUTS = ("tn", "nn", "wx")
LIBRARIES = ("cublas", "cublaslt")


def product_shapes(size: str) -> dict[str, tuple[int, int, bool]]:
    """name: (out, in, adds into the residual) of a folded step's products and the head."""
    hidden, inter, heads, kv_heads, _ = SIZES[size]
    dim = head_dim(size)
    return {
        "qkv": ((heads + 2 * kv_heads) * dim, hidden, False),
        "o": (hidden, heads * dim, True),
        "gate_up": (2 * inter, hidden, False),
        "down": (hidden, inter, True),
        "head": (32000, hidden, False),
    }


def product_chain(out: int, inp: int, adds: bool, rows: int, layout: str, copies: int, device,
                  dtype=torch.bfloat16, seed: int = 0):  # fmt: skip
    """A call of `copies` products of one shape, each reading its own weight in `layout`; it returns
    the last product [rows, out] (the residual, for a product that adds into it)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    weights = [(torch.randn(out, inp, generator=gen) * inp**-0.5).to(device, dtype) for _ in range(copies)]
    if layout == "nn":
        weights = [w.t().contiguous() for w in weights]
    x = torch.randn(rows, inp, generator=gen).to(device, dtype)
    xt = x.t().contiguous()
    res = torch.zeros(rows, out, device=device, dtype=dtype)

    def run():
        y = res
        for w in weights:
            if layout == "wx":
                y = torch.mm(w, xt).t()
            elif adds:
                res.addmm_(x, w.t() if layout == "tn" else w)
            elif layout == "tn":
                y = F.linear(x, w)
            else:
                y = torch.mm(x, w)
        return res if adds and layout != "wx" else y

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1b", choices=sorted(SIZES))
    p.add_argument("--rows", type=int, nargs="+", default=[50])
    p.add_argument("--copies", type=int, default=22, help="products a chain, each its own weight (the layers)")
    p.add_argument("--replays", type=int, default=50)
    p.add_argument("--cols", type=int, default=200, help="the folded chain's keys and values a row")
    p.add_argument(
        "--no-chain",
        action="store_true",
        help="the products only (at a prefill's rows the chain's cache would take GBs)",
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    device = torch.device("cuda")
    rate = copy_rate(device)
    results = []
    for rows in args.rows:
        for name, (out, inp, adds) in product_shapes(args.size).items():
            for layout in LAYOUTS:
                for library in LIBRARIES:
                    torch.backends.cuda.preferred_blas_library(library)
                    run = product_chain(out, inp, adds, rows, layout, args.copies, device)
                    ms, _ = replayed_ms(run, args.replays)
                    us = ms * 1e3 / args.copies
                    share = out * inp * 2 / (us / 1e6) / rate
                    results.append(dict(rows=rows, product=name, layout=layout, library=library, us=us, share=share))
                    print(f"rows {rows:3d}  {name:8s} {layout} {library:8s} {us:6.2f} µs  {share:6.1%}", flush=True)
                    del run
                    torch.cuda.empty_cache()
        if args.no_chain:
            continue
        chain = Chain(args.size, rows, args.cols, device)
        layers = chain.shape[-1]
        for layout in ("tn", "nn"):
            for library in LIBRARIES:
                torch.backends.cuda.preferred_blas_library(library)
                ms, _ = replayed_ms(functools.partial(chain.run_folded, transposed=layout == "nn"), args.replays)
                us = ms * 1e3 / layers
                results.append(dict(rows=rows, product="folded layer", layout=layout, library=library, us=us))
                print(f"rows {rows:3d}  folded layer {layout} {library:8s} {us:6.2f} µs a layer", flush=True)
        del chain
        torch.cuda.empty_cache()
    torch.backends.cuda.preferred_blas_library("cublas")
    write_report(args.out, copy_rate=rate, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
