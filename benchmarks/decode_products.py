"""A decode step's matrix products at its few rows, each way the engine could run them: cuBLAS
through `F.linear` (the engine's way), cuBLASLt (`torch.backends.cuda.preferred_blas_library`), and
evaluation/engine/server/skinny.py's split-K kernels in a sweep of block shapes. Bandwidth is the
product's weights over its time (the rows' inputs and outputs are < 2 % of the bytes).

Each product runs over as many copies of its weight as make ≥ 512 MB (so none is served from the
50 MB L2, as a step's 22 layers are not), captured as one CUDA graph and replayed: the time per
product includes the gaps between kernels in a graph, as a step's do, and no launch from the host.

    bash benchmarks/gpu_env.sh python3 -m benchmarks.decode_products --size 1b --rows 50 --out var/products

Prints a table per shape and the fastest way each; writes results.json to --out. With `--chain 22`,
a step's products in order over 22 layers of their own weights, as cuBLAS, as skinny.py's kernels, with
programmatic dependent launch (each kernel reads its first weights while the one before ends), and
with the gate/up product and SiLU × up as one kernel (`skinny.gate_up_silu`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (name, N, K) of one layer's products as a decode step runs them (q/k/v and gate/up joined).
SHAPES = {
    "1b": [("qkv", 2048 + 2 * 256, 2048), ("o", 2048, 2048), ("gate_up", 2 * 5632, 2048), ("down", 2048, 5632)],
    "7b": [("qkv", 3 * 4096, 4096), ("o", 4096, 4096), ("gate_up", 2 * 11008, 4096), ("down", 4096, 11008)],
}


def configs(n: int, k: int):
    from evaluation.engine.server.skinny import Config

    out = []
    for block_n in (32, 64, 128):
        for block_k in (128, 256):
            chunks = -(-k // block_k)
            for split in (1, 2, 4, 8, 16):
                if split > chunks:
                    continue
                programs = -(-n // block_n) * split
                if not 100 <= programs <= 700:
                    continue
                for warps, stages in ((4, 4), (8, 3)):
                    out.append(Config(block_n, block_k, split, warps, stages))
    return out


def time_graph(fn, copies, torch, repeat: int = 10) -> float:
    """Seconds per call of fn(weight) over the copies, as one graph's replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for w in copies[:3]:
            fn(w)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for w in copies:
            fn(w)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeat):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / len(copies))
    times.sort()
    return times[len(times) // 2]


def measure(rows: int, name: str, n: int, k: int) -> dict:
    """One product's ways at this many rows; prints the fastest."""
    import torch
    import torch.nn.functional as F

    from evaluation.engine.server import skinny

    nbytes = n * k * 2
    copies = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
              for _ in range(max(4, -(-512 * 2**20 // nbytes)))]  # fmt: skip
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    want = F.linear(x, copies[0]).float()
    row = {"rows": rows, "product": name, "n": n, "k": k, "mb": round(nbytes / 2**20, 1), "ways": []}

    def record(way, seconds, got=None):
        entry = {"way": way, "us": round(seconds * 1e6, 2), "tb_s": round(nbytes / seconds / 1e12, 2)}
        if got is not None:
            entry["max_rel_diff"] = float((got.float() - want).abs().max() / want.abs().max())
        row["ways"].append(entry)

    record("cublas", time_graph(lambda w: F.linear(x, w), copies, torch))
    try:
        torch.backends.cuda.preferred_blas_library("cublaslt")
        record("cublaslt", time_graph(lambda w: F.linear(x, w), copies, torch))
    finally:
        torch.backends.cuda.preferred_blas_library("cublas")
    for config in configs(n, k):
        try:
            got = skinny.product(x, copies[0], config)
            seconds = time_graph(lambda w, c=config: skinny.product(x, w, c), copies, torch)
        except Exception as exc:  # a config that does not compile (shared memory) is skipped
            row["ways"].append({"way": str(config), "error": str(exc)[:120]})
            continue
        label = f"skinny {config.block_n}x{config.block_k} split {config.split_k} w{config.warps} s{config.stages}"
        record(label, seconds, got)
    timed = sorted((w for w in row["ways"] if "us" in w), key=lambda w: w["us"])
    row["best"] = timed[0]
    print(f"rows {rows} {name} [{n} x {k}] {row['mb']} MB:", flush=True)
    for w in timed[:8] + [w for w in timed[8:] if w["way"].startswith("cublas")]:
        print(f"   {w['way']:<34} {w['us']:8.2f} us {w['tb_s']:5.2f} TB/s", w.get("max_rel_diff", ""))
    return row


# The sweep's fastest at 50 rows on an H200 (session 22, call 1), per product.
CHAIN_CONFIGS = {"qkv": (128, 256, 8), "o": (64, 128, 8), "gate_up": (64, 256, 1), "down": (32, 128, 4)}
SILU_CONFIGS = [(32, 256), (32, 128), (64, 128), (16, 256)]


def replay_seconds(run, torch, repeat: int = 10) -> float:
    """Median seconds of one replay of `run` captured as a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeat):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[repeat // 2]


def chain(size: str, rows: int, layers: int) -> dict:
    """A step's products over `layers` layers of their own weights, in order (q/k/v, output, gate/up
    with SiLU × up, down), each way: how much the products and their boundaries cost in a step."""
    import torch
    import torch.nn.functional as F

    from evaluation.engine.server import fused, skinny

    shapes = dict((name, (n, k)) for name, n, k in SHAPES[size])
    weights = [{name: torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
                for name, (n, k) in shapes.items()} for _ in range(layers)]  # fmt: skip
    hidden, inter = shapes["o"][0], shapes["down"][1]
    x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
    weight_bytes = sum(w.numel() * 2 for layer in weights for w in layer.values())

    def cublas():
        for w in weights:
            F.linear(x, w["qkv"])
            F.linear(x, w["o"])
            gate, up = F.linear(x, w["gate_up"]).split(inter, dim=-1)
            F.linear(fused.silu_mul(gate, up), w["down"])

    def ours(pdl: bool, joined_silu: tuple | None, products: bool = True):
        def config(name):
            return skinny.Config(*CHAIN_CONFIGS[name], pdl=pdl)

        def run():
            for w in weights:
                if products:
                    skinny.product(x, w["qkv"], config("qkv"))
                    skinny.product(x, w["o"], config("o"))
                else:
                    F.linear(x, w["qkv"])
                    F.linear(x, w["o"])
                if joined_silu:
                    h = skinny.gate_up_silu(x, w["gate_up"], skinny.Config(*joined_silu, 1, pdl=pdl))
                elif products:
                    gate, up = skinny.product(x, w["gate_up"], config("gate_up")).split(inter, dim=-1)
                    h = fused.silu_mul(gate, up)
                else:
                    gate, up = F.linear(x, w["gate_up"]).split(inter, dim=-1)
                    h = fused.silu_mul(gate, up)
                if products:
                    skinny.product(h, w["down"], config("down"))
                else:
                    F.linear(h, w["down"])

        return run

    ways = {"cublas, SiLU kernel": cublas, "skinny, SiLU kernel": ours(False, None),
            "skinny + PDL, SiLU kernel": ours(True, None)}  # fmt: skip
    for c in SILU_CONFIGS:
        ways[f"cublas, gate/up+SiLU {c[0]}x{c[1]}"] = ours(False, c, products=False)
        ways[f"skinny, gate/up+SiLU {c[0]}x{c[1]}"] = ours(False, c)
        ways[f"skinny + PDL, gate/up+SiLU {c[0]}x{c[1]}"] = ours(True, c)
    out = {"size": size, "rows": rows, "layers": layers, "weight_gb": weight_bytes / 1e9, "ways": {}}
    for name, run in ways.items():
        try:
            seconds = replay_seconds(run, torch)
        except Exception as exc:
            out["ways"][name] = {"error": str(exc)[:200]}
            continue
        out["ways"][name] = {"us_per_layer": round(seconds / layers * 1e6, 2),
                             "tb_s": round(weight_bytes / seconds / 1e12, 2)}  # fmt: skip
        print(f"chain {size} rows {rows}: {name:<40} {seconds / layers * 1e6:7.2f} us a layer "
              f"{weight_bytes / seconds / 1e12:5.2f} TB/s", flush=True)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SHAPES), default="1b")
    p.add_argument("--rows", type=int, nargs="+", default=[50])
    p.add_argument("--chain", type=int, default=0, help="layers of the products in order, each way (0: the sweep)")
    p.add_argument("--out", default="var/products")
    args = p.parse_args(argv)

    import torch

    torch.manual_seed(0)
    if args.chain:
        results = [chain(args.size, rows, args.chain) for rows in args.rows]
    else:
        results = [measure(rows, name, n, k) for rows in args.rows for name, n, k in SHAPES[args.size]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
