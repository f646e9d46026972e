"""Where a new model server process's warm-up goes: the server's own `create_service` for a model
folder, its warm-up under cProfile. Prints the start-up line (`warm_up_parts`) and the functions by
cumulative and by own time.

    bash benchmarks/gpu_env.sh python3 -m benchmarks.warm_up_profile MODEL_DIR [--standby]

Run it twice on a new machine: the first run fills Triton's cache (~/.triton/cache), the second is
what every later evaluation's server pays. `--standby` first does what a standby server does while
it waits (`evaluation.engine.standby.preload`), as a worker's evaluations find it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--standby", action="store_true", help="preload as a standby server first")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--top", type=int, default=45)
    args = p.parse_args(argv)
    if args.standby:
        from evaluation.engine import standby

        started = time.monotonic()
        standby.preload("server")
        print(f"standby preload {time.monotonic() - started:.2f} s")
    from evaluation.engine.server import app, build_parser, create_service

    server_args = build_parser().parse_args(
        ["--model", args.model, "--device", args.device, "--dtype", args.dtype, "--track-memory-gb", "24"]
    )
    profile = cProfile.Profile()
    warm_up = app.ModelService.warm_up

    def profiled(service) -> None:
        profile.enable()
        try:
            warm_up(service)
        finally:
            profile.disable()

    app.ModelService.warm_up = profiled
    started = time.monotonic()
    try:
        service = create_service(server_args)
    finally:
        app.ModelService.warm_up = warm_up
    print("startup", service.startup, f"total {time.monotonic() - started:.2f} s")
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats(order).print_stats(args.top)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
