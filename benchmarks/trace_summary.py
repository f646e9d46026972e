"""Where a profiled batch's GPU time and idle time go, from a Chrome trace of torch.profiler.

    python -m benchmarks.decode_start MODEL --batches 0 --profile-new-tokens 8 --trace first.json
    python -m benchmarks.trace_summary first.json [--from-us 28000] [--to-us 40000] [--per 8] [--grids]

Prints the trace's named ranges (`record_function`: the decoder's pieces), the GPU's busy time over its
span, its busy stretches (runs of work without a gap over 20 µs, of 50 kernels or more: a replay or a
few, the steps), the kernels by total time (with `--from-us T` / `--to-us T`, only those starting T µs
or more / less after the trace's first event; with `--per N`, their time divided by N, say by the
profiled steps; with `--grids`, each launch grid of a kernel apart), and the longest idle gaps of the
GPU with the host's operators and runtime calls that ran during each (how much of the gap each took)
and the range it fell in.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json

GPU = ("kernel", "gpu_memcpy", "gpu_memset")
HOST = ("cpu_op", "cuda_runtime", "cuda_driver")


def load(path: str) -> tuple[list[dict], float]:
    """The trace's complete events and the time of its first one."""
    with open(path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    return events, min(e["ts"] for e in events)


def kernels(events: list[dict], t0: float, from_us: float = 0.0, to_us: float = float("inf"),
            grids: bool = False) -> list[tuple[str, int, float]]:  # fmt: skip
    """(name, count, total µs) of the GPU's work starting in [from_us, to_us), longest total first; with
    `grids`, the name followed by the launch grid."""
    count, total = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") in GPU and from_us <= e["ts"] - t0 < to_us:
            grid = e.get("args", {}).get("grid")
            name = f"{grid} {e['name']}" if grids and grid else e["name"]
            count[name] += 1
            total[name] += e["dur"]
    return [(name, count[name], us) for name, us in total.most_common()]


def stretches(events: list[dict], t0: float, least_us: float = 20.0) -> list[tuple[float, float, float, int]]:
    """(start, end, busy µs, kernels) of each run of GPU work with no gap over `least_us`, in order."""
    work = sorted((e for e in events if e.get("cat") in GPU), key=lambda e: e["ts"])
    found: list[list[float]] = []
    for e in work:
        start, end = e["ts"] - t0, e["ts"] - t0 + e["dur"]
        if found and start - found[-1][1] <= least_us:
            found[-1][1] = max(found[-1][1], end)
            found[-1][2] += e["dur"]
            found[-1][3] += 1
        else:
            found.append([start, end, e["dur"], 1])
    return [(a, b, busy, int(n)) for a, b, busy, n in found]


def gaps(events: list[dict], least_us: float = 20.0) -> list[tuple[float, float, float]]:
    """(length, start, end) of each stretch longer than `least_us` in which no GPU work ran, longest first:
    the spaces between `stretches` (in the trace's own time)."""
    runs = stretches(events, 0.0, least_us)
    return sorted(((b[0] - a[1], a[1], b[0]) for a, b in itertools.pairwise(runs)), reverse=True)


def during(events: list[dict], start: float, end: float) -> list[tuple[str, float]]:
    """The host's operators and runtime calls in [start, end): each name with the µs of it inside."""
    inside = collections.Counter()
    for e in events:
        if e.get("cat") in HOST and e["ts"] < end and e["ts"] + e["dur"] > start:
            inside[e["name"]] += min(end, e["ts"] + e["dur"]) - max(start, e["ts"])
    return inside.most_common()


def summarize(path: str, from_us: float = 0.0, per: int = 1, top: int = 15, gap_count: int = 12,
              to_us: float = float("inf"), grids: bool = False) -> str:  # fmt: skip
    events, t0 = load(path)
    ranges = sorted((e for e in events if e.get("cat") == "user_annotation"), key=lambda e: e["ts"])
    lines = ["## ranges (start µs, µs)"]
    lines += [f"{r['ts'] - t0:10.0f} {r['dur']:9.0f}  {r['name']}" for r in ranges]
    work = [e for e in events if e.get("cat") in GPU]
    if not work:
        return "\n".join(lines + ["no GPU work in the trace"])
    span = max(e["ts"] + e["dur"] for e in work) - min(e["ts"] for e in work)
    lines.append(f"## GPU: busy {sum(e['dur'] for e in work):.0f} µs of a {span:.0f} µs span")
    lines.append("## GPU busy stretches of 50 kernels or more (start, end, busy µs, kernels)")
    lines += [f"{a:10.0f} {b:9.0f} {busy:9.0f} {n:6d}" for a, b, busy, n in stretches(events, t0) if n >= 50]
    lines.append(f"## kernels from {from_us:.0f} to {to_us:.0f} µs, µs per {per}")
    lines += [f"{us / per:10.1f} {n / per:7.1f}×  {us / n:8.2f} each  {name[:90]}"
              for name, n, us in kernels(events, t0, from_us, to_us, grids)[:top]]  # fmt: skip
    idle = gaps(events)
    lines.append(f"## GPU idle: {len(idle)} gaps over 20 µs, {sum(g[0] for g in idle):.0f} µs")
    for length, start, end in idle[:gap_count]:
        where = [r["name"] for r in ranges if r["ts"] <= start <= r["ts"] + r["dur"]]
        host = ", ".join(f"{name[:40]} {us:.0f}" for name, us in during(events, start, end)[:6])
        lines.append(f"{length:8.0f} µs at {start - t0:9.0f} in {where[-1] if where else '-'}: {host}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace")
    p.add_argument("--from-us", type=float, default=0.0, help="kernels starting this long after the first event")
    p.add_argument("--to-us", type=float, default=float("inf"), help="kernels starting before this")
    p.add_argument("--grids", action="store_true", help="each launch grid of a kernel apart")
    p.add_argument("--per", type=int, default=1, help="divide the kernels' time by this (say, the steps)")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--gaps", type=int, default=12)
    args = p.parse_args(argv)
    print(summarize(args.trace, args.from_us, args.per, args.top, args.gaps, args.to_us, args.grids))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
