"""Where the processes of an evaluation spend their time, from `py-spy record --format raw`.

    py-spy record -r 100 --gil --subprocesses --format raw -o spy.txt -- python -m benchmarks.helm_speed ...
    python -m benchmarks.spy_summary spy.txt [--within helm/benchmark/runner.py] [--top 40]

`--gil` samples only the thread that holds the interpreter lock, so a process's samples are the CPU
time its Python used (threads waiting on a lock or a socket do not count). Samples are grouped by
process kind (helm-run, model server, HTTP front, other; a standby importing while it waits is a kind
of its own, "standby imports"), then functions are listed by inclusive share
within the kind; `--within TEXT` keeps only stacks with a frame ("function (file:line)") that contains
TEXT (say, `helm/benchmark/metrics/` or `execute (`).
"""

from __future__ import annotations

import argparse
import collections
import re

FRAME = re.compile(r"(\S+) \((.*?):(\d+)\)")


# A standby's command line (runner.start_standbys), whatever it was given the job of.
STANDBY = re.compile(r"engine\.standby(?: --ready-fd \d+)? (helm|server)")


def kind_of(frames: list[str]) -> str:
    procs = [f for f in frames if f.startswith("process ")]
    last = procs[-1] if procs else ""
    standby = STANDBY.search(last)
    if "helm.benchmark.run" in last or "helm_fast" in last or (standby and standby.group(1) == "helm"):
        return "helm-run"
    if "engine.server" in last or (standby and standby.group(1) == "server"):
        # The HTTP front is a fork of the server process: the same command line, one level deeper.
        forked = len(procs) >= 2 and procs[-1].split(":", 1)[-1] == procs[-2].split(":", 1)[-1]
        return "server front" if forked else "server"
    return "other"


def summarize(path: str, within: str | None, top: int) -> str:
    inclusive: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    for line in open(path, encoding="utf-8", errors="replace"):
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if within and not any(within in f for f in frames):
            continue
        # A standby importing while it waits (the next evaluation's, started beside this one) is no part
        # of the run: counted apart, or it drowns the run's own samples (session 16).
        kind = (
            "standby imports"
            if any(f.startswith("preload (") and "engine/standby.py" in f for f in frames)
            else kind_of(frames)
        )
        n = int(count)
        totals[kind] += n
        seen = set()
        for frame in frames:
            if frame.startswith("process "):
                continue
            m = FRAME.match(frame)
            key = f"{m.group(1)} {m.group(2).split('site-packages/')[-1]}" if m else frame
            if key not in seen:
                seen.add(key)
                inclusive[kind][key] += n
    lines = []
    for kind, total in totals.most_common():
        lines.append(f"## {kind}: {total} samples")
        for key, n in inclusive[kind].most_common(top):
            if not any(skip in key for skip in ("threading.py", "concurrent/futures", "runpy")):
                lines.append(f"{100 * n / total:5.1f}% {key}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("raw")
    p.add_argument("--within")
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args()
    print(summarize(args.raw, args.within, args.top))


if __name__ == "__main__":
    main()
