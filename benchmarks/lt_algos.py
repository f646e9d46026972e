"""Does a decode step's product get faster with a cuBLASLt algorithm chosen by timing?

For each product of a folded step (`product_layouts.product_shapes`: q/k/v, output, gate/up, down, the
head), at a step's rows, in the engine's layout (the weight stored [in, out]): a chain of `copies`
products, each over its own copy of the weight (so L2 holds none), replayed as one CUDA graph, once with
torch's product (what the engine runs) and once with each of cuBLASLt's candidates
(`evaluation/engine/server/lt_matmul.py`: the heuristic's list and each with other split counts).
Printed: µs a product and the weight's bytes over it as a share of the copy rate, torch's and the five
fastest candidates' with their tile, stages, splits and reduction scheme, and how far the fastest's
output is from torch's and from an fp32 product.

    bash benchmarks/gpu_env.sh python3 -m benchmarks.lt_algos --size 1b --rows 64

Session 31, an H100 (docs/benchmarks.md): 88 candidates a step product (56 for the head), the fastest 0-10 % under torch's
first timing and bitwise equal to its output (q/k/v 6.75 against 7.47 µs, down 11.19 both ways). ~30 s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fused_kernels import write_report  # noqa: E402
from benchmarks.gpu_ceilings import copy_rate  # noqa: E402
from benchmarks.l2_prefetch import SIZES  # noqa: E402
from benchmarks.product_layouts import product_shapes  # noqa: E402
from evaluation.engine.server import lt_matmul  # noqa: E402


def chain_of(product: lt_matmul.Product, copies: int, device, seed: int = 0):
    """The chain's call (algo -> None) over `copies` weights of the product's shape, its input, one
    weight and the output it writes."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n, k = product.n, product.k
    weights = [(torch.randn(k, n, generator=gen) * k**-0.5).to(device, product.dtype) for _ in range(copies)]
    run, a, out = lt_matmul.chain(product, weights, seed)
    return run, a, weights[0], out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1b", choices=sorted(SIZES))
    p.add_argument("--rows", type=int, nargs="+", default=[64])
    p.add_argument("--copies", type=int, default=22)
    p.add_argument("--replays", type=int, default=30)
    p.add_argument("--count", type=int, default=32, help="heuristic results asked for")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    device = torch.device("cuda")
    rate = copy_rate(device)
    results = []
    for rows in args.rows:
        for name, (n, k, adds) in product_shapes(args.size).items():
            product = lt_matmul.Product(rows, n, k, torch.bfloat16, adds)
            run, a, w, out = chain_of(product, args.copies, device)
            timed = lt_matmul.time_candidates(product, run, args.replays, args.count)
            torch_ms = next(ms for ms, algo in timed if algo is None)
            fastest = [(ms, algo) for ms, algo in timed if algo is not None][:5]

            def us_share(ms, n=n, k=k):
                us = ms * 1e3 / args.copies
                return us, n * k * 2 / (us / 1e6) / rate

            us, share = us_share(torch_ms)
            print(f"rows {rows} {name:8s} torch {us:6.2f} µs {share:6.1%}  ({len(timed) - 1} candidates)", flush=True)
            row = dict(rows=rows, product=name, torch_us=us, torch_share=share, candidates=len(timed) - 1, fastest=[])
            for ms, algo in fastest:
                us, share = us_share(ms)
                cfg = lt_matmul.config(algo)
                row["fastest"].append(dict(us=us, share=share, **cfg))
                print(f"    lt {us:6.2f} µs {share:6.1%}  {cfg}", flush=True)
            if fastest:
                out.zero_()
                product(a, w, out, fastest[0][1])
                got = out.float().clone()
                out.zero_()
                product(a, w, out, None)
                ref = a.float() @ w.float()
                row["diff_torch"] = (got - out.float()).abs().max().item()
                row["diff_fp32"] = (got - ref).abs().max().item()
                row["diff_fp32_torch"] = (out.float() - ref).abs().max().item()
                print(f"    fastest vs torch {row['diff_torch']:.3g}, vs fp32 {row['diff_fp32']:.3g} "
                      f"(torch vs fp32 {row['diff_fp32_torch']:.3g})", flush=True)  # fmt: skip
            results.append(row)
            del run, a, w, out
            torch.cuda.empty_cache()
    write_report(args.out, copy_rate=rate, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
