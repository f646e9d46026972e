"""Where a decoding batch's time before its first step goes: the server's own service for a model
folder, warmed up, then batches of greedy rows shaped like the generation suite's (two runs' few-shot
prefixes, 128 new tokens), each piece of the prefill and the static decoder's start timed on its own
(synchronized before and after: host milliseconds, then the GPU's wait). Finally one short batch
under torch.profiler (operators by own CPU time, and on a GPU by GPU time: `--profile-new-tokens 16`
shows the decode steps' kernels).

    ENGINE_DECODE_STANDING=1|0 bash benchmarks/gpu_env.sh python3 -m benchmarks.decode_start MODEL_DIR
    ENGINE_GRAPH_DECODE_PREFILL=1 bash benchmarks/gpu_env.sh python3 -m benchmarks.decode_start MODEL_DIR

The first batch after the warm-up is what an evaluation's generation suite pays (session 21: 16 ms
of first kernel launches in `row_bounds`, since warmed up); the later ones show the steady state.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--budget-gb", type=float, default=24.0)
    p.add_argument("--rows", type=int, default=50)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--top", type=int, default=30, help="profiler rows (0: no profile)")
    p.add_argument("--trace", help="also write the profiled batch's timeline here (Chrome trace JSON)")
    p.add_argument(
        "--profile-new-tokens",
        type=int,
        default=2,
        help="new tokens of the profiled batch (16: its steps' kernels by GPU time)",
    )
    args = p.parse_args(argv)

    import torch
    from torch.profiler import record_function

    from evaluation.engine.loading import load_model
    from evaluation.engine.server import decode_attention, static_decode
    from evaluation.engine.server.app import ModelService
    from evaluation.engine.server.batching import default_limits
    from evaluation.engine.server.generation import Row

    cuda = args.device.startswith("cuda")
    loaded = load_model(
        args.model, device=args.device, dtype=args.dtype, memory_budget_gb=args.budget_gb if cuda else None
    )
    limits = default_limits(loaded.model, loaded.device, loaded.budget_bytes)
    service = ModelService(loaded, limits, decode="auto" if cuda else "static")
    service.warm_up()
    generator, decoder = service.generator, service.generator.static
    standing = decoder.standing
    print("standing", standing and (standing.rows, standing.columns), flush=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    log: list[tuple[str, float, float]] = []

    def timed(fn, label):
        def wrapper(*a, **k):
            sync()
            t0 = time.perf_counter()
            with record_function(label):  # the piece's name on a trace's timeline
                out = fn(*a, **k)
            t1 = time.perf_counter()
            sync()
            log.append((label, round((t1 - t0) * 1e3, 2), round((time.perf_counter() - t1) * 1e3, 2)))
            return out

        return wrapper

    # Patched where the decoder looks them up; put back at the end.
    patched = [
        (decode_attention, "row_bounds"),
        (static_decode, "cache_tensors"),
        (static_decode._Buffers, "refresh_rotary"),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name in patched]
    for owner, name, fn in saved:
        setattr(owner, name, timed(fn, name))
    pieces = ((decoder, "reserve"), (decoder, "start"), (decoder, "feed"), (generator, "_prefill"),
              (generator, "_graph_prefill"))  # fmt: skip
    for owner, name in pieces:
        setattr(owner, name, timed(getattr(owner, name), name.lstrip("_")))
    if generator.graphs is not None:  # each replay (a forward on the CPU) a range of its own
        run = generator.graphs._run

        def replay(g):
            with record_function("replay"):
                return run(g)

        generator.graphs._run = replay
    try:
        vocab = loaded.model.config.vocab_size
        rng = random.Random(0)
        prefixes = [[rng.randrange(3, vocab) for _ in range(85)] for _ in range(2)]

        def rows(new_tokens: int) -> list[Row]:
            return [
                Row(prompt_ids=prefixes[i % 2] + [rng.randrange(3, vocab) for _ in range(rng.randrange(25, 60))],
                    max_new_tokens=new_tokens)
                for i in range(args.rows)
            ]  # fmt: skip

        for index in range(args.batches):
            log.clear()
            sync()
            t0 = time.perf_counter()
            generator.generate(rows(args.new_tokens))
            sync()
            times = {k: round(v * 1e3, 1) for k, v in generator.last_decode_times.items() if isinstance(v, float)}
            print(f"batch {index}: {(time.perf_counter() - t0) * 1e3:.1f} ms", times, "steps",
                  generator.last_decode_steps)  # fmt: skip
            print("   (piece, host ms, then GPU ms)", log, flush=True)
            if generator.graphs is not None:
                print("   (packed replays' host ms)", generator.graphs.last_steps, flush=True)
        if args.top:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=activities) as prof:
                generator.generate(rows(args.profile_new_tokens))
                sync()
            if args.trace:
                prof.export_chrome_trace(args.trace)
            print("host operators of the prefill and start, outside replays:", host_operators(prof.events()))
            averages = prof.key_averages()
            print(averages.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=60))
            if cuda:
                print(averages.table(sort_by="self_cuda_time_total", row_limit=args.top, max_name_column_width=90))
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
    return 0


def host_operators(events) -> dict:
    """The profiled batch's torch operators called by the decoding prefill and the decoder's start
    outside the replays (on a GPU each replay is one launch; on the CPU it runs the model's operators):
    how many, and of them copies. Nested operators count once, as their outermost call."""

    def pieces(event):
        names = []
        while event is not None:
            names.append(event.name)
            event = event.cpu_parent
        return names

    counts = {"operators": 0, "copies": 0}
    for event in events:
        if not event.name.startswith("aten::"):
            continue
        above = pieces(event.cpu_parent)
        if "replay" in above or any(name.startswith("aten::") for name in above):
            continue
        if "graph_prefill" in above or "start" in above or "prefill" in above:
            counts["operators"] += 1
            counts["copies"] += event.name in ("aten::copy_", "aten::clone", "aten::cat", "aten::stack")
    return counts


if __name__ == "__main__":
    sys.exit(main())
